#!/usr/bin/env python3
"""Hot-swap demonstration: three models, a memory budget that holds two, concurrent requests.

Builds three tiny random-weight GGUFs (tests/ggufmaker.py) unless given three paths, writes
appliance.toml / models.toml with `memory.budget` sized for two of them (from the scheduler's
own estimator), pulls them into a fresh store, starts `python -m appliance serve` on a free
loopback port, fires concurrent requests at all three models with the openai client, and
prints each result plus GET /admin/models before, during (each distinct residency) and after,
and the scheduler's /metrics series. Exit 0 only if every request completed in full and no
more than two models were ever resident at once.

    .venv/bin/python scripts/demo_swap.py [--models A.gguf B.gguf C.gguf] [--requests 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.config import ModelConfig  # noqa: E402
from appliance.hardware import detect  # noqa: E402
from appliance.scheduler import GGUFEstimator  # noqa: E402

IDS = ("alpha", "bravo", "charlie")
ROW_KEYS = ("id", "state", "device", "memory_estimated", "memory_measured", "slots_busy", "slots_total",
            "queue_depth", "last_used", "pinned", "bundle_signer")


def tiny_models(where: Path) -> list[Path]:
    sys.path.insert(0, str(ROOT / "tests"))
    from ggufmaker import Shape, make_gguf

    return [make_gguf(where / f"{mid}.gguf", Shape(name=mid), seed=i) for i, mid in enumerate(IDS)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_configs(work: Path, paths: list[Path], context: int, parallel: int, port: int) -> tuple[Path, Path, int, int]:
    cfgs = {mid: ModelConfig(source=f"file://{p}", context=context, parallel=parallel, keep_alive="forever")
            for mid, p in zip(IDS, paths)}
    devices = detect().devices()
    kind = devices[0].kind if devices else "cpu"
    est = GGUFEstimator()
    needs = sorted(est.estimate([p], cfgs[mid], gpu_layers=est.layer_count([p]), device=kind).total
                   for mid, p in zip(IDS, paths))
    # two fit (the two largest with 25% of one model to spare), all three do not
    budget = needs[1] + needs[2] + needs[0] // 4
    assert budget < sum(needs)
    (work / "appliance.toml").write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[store]\npath = "{work / "store"}"\n'
        f"[memory]\nbudget = {budget}\n"
        '[queue]\nswap_after = "2s"\nmax_wait = "300s"\n'
    )
    lines = []
    for mid, p in zip(IDS, paths):
        lines += [f'["{mid}"]', f'source = "file://{p}"', f"context = {context}", f"parallel = {parallel}",
                  'keep_alive = "forever"', ""]
    (work / "models.toml").write_text("\n".join(lines))
    return work / "appliance.toml", work / "models.toml", budget, needs[-1]


def rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: r.get(k) for k in ROW_KEYS} for r in data["data"]]


def show(title: str, data: dict[str, Any]) -> None:
    print(f"--- GET /admin/models {title}")
    for r in rows(data):
        print("  " + json.dumps(r))


async def wait_ready(http: aiohttp.ClientSession, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            async with http.get("/ready") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("server not ready after 60 s")


async def one(c: openai.AsyncOpenAI, mid: str, i: int, max_tokens: int, t0: float) -> dict[str, Any]:
    start = time.monotonic()
    try:
        r = await c.completions.create(model=mid, prompt=f"Request {i} for {mid}:", max_tokens=max_tokens,
                                       temperature=0, logit_bias={"2": -100})  # no EOS: full length
        ch = r.choices[0]
        return {"model": mid, "i": i, "status": 200, "served_by": r.model, "finish": ch.finish_reason,
                "tokens": r.usage.completion_tokens, "chars": len(ch.text),
                "start_s": round(start - t0, 2), "took_s": round(time.monotonic() - start, 2)}
    except openai.APIStatusError as e:
        return {"model": mid, "i": i, "status": e.status_code, "error": str(e)[:200]}
    except openai.APIError as e:
        return {"model": mid, "i": i, "status": None, "error": str(e)[:200]}


async def watch(http: aiohttp.ClientSession, stop: asyncio.Event, seen: list[tuple[float, dict[str, Any]]], t0: float) -> None:
    last = None
    while not stop.is_set():
        async with http.get("/admin/models") as r:
            data = await r.json()
        key = tuple((x["id"], x["state"]) for x in data["data"])
        if key != last:
            seen.append((time.monotonic() - t0, data))
            last = key
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except asyncio.TimeoutError:
            pass


def metric_lines(text: str) -> list[str]:
    wanted = ("appliance_model_loads_total", "appliance_evictions_total", "appliance_queue_wait_seconds_count",
              "appliance_model_load_seconds_sum")
    return [ln for ln in text.splitlines() if ln.startswith(wanted)]


async def demo(args: argparse.Namespace) -> int:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="demo-swap-"))
    work.mkdir(parents=True, exist_ok=True)
    paths = [Path(p).resolve() for p in args.models] if args.models else tiny_models(work / "gguf")
    port = free_port()
    cfg, models, budget, biggest = write_configs(work, paths, args.context, args.parallel, port)
    print(f"workdir {work}; budget {budget} bytes = {budget / biggest:.2f} x the largest model's estimate")
    env = {**os.environ, "HOME": str(work)}
    py = sys.executable
    subprocess.run([py, "-m", "appliance", "pull", "-q", "--config", str(cfg), "--models", str(models)],
                   check=True, cwd=work, env=env)
    log = (work / "serve.log").open("wb")
    proc = subprocess.Popen([py, "-m", "appliance", "serve", "--config", str(cfg), "--models", str(models)],
                            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(url) as http:
            await wait_ready(http, proc)
            async with http.get("/admin/models") as r:
                show("before", await r.json())
            seen: list[tuple[float, dict[str, Any]]] = []
            stop = asyncio.Event()
            t0 = time.monotonic()
            watcher = asyncio.create_task(watch(http, stop, seen, t0))
            async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                                          timeout=600) as c:
                jobs = [one(c, mid, i, args.max_tokens, t0) for i in range(args.requests) for mid in IDS]
                results = await asyncio.gather(*jobs)
            stop.set()
            await watcher
            print(f"--- {len(results)} concurrent requests ({args.requests} per model, max_tokens {args.max_tokens})")
            for res in results:
                print("  " + json.dumps(res))
            most = 0
            for at, data in seen:
                resident = [x["id"] for x in data["data"] if x["state"] != "unloaded"]
                most = max(most, len(resident))
                show(f"during (t={at:.2f}s; not unloaded: {', '.join(resident) or 'none'})", data)
            async with http.get("/admin/models") as r:
                show("after", await r.json())
            async with http.get("/metrics") as r:
                print("--- /metrics (scheduler series)")
                for ln in metric_lines(await r.text()):
                    print("  " + ln)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        log.close()
    complete = all(r["status"] == 200 and r["served_by"] == r["model"] and r["finish"] == "length"
                   and r["tokens"] == args.max_tokens for r in results)
    ever = {x["id"] for _, d in seen for x in d["data"] if x["state"] == "loaded"}
    print(f"--- all complete in full: {complete}; most resident at once: {most} (budget holds 2); "
          f"models that were loaded: {sorted(ever)}; server exit code {code}; log {work / 'serve.log'}")
    return 0 if complete and most <= 2 and len(ever) == 3 and code == 0 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs=3, metavar="GGUF", help="three GGUF files (default: build tiny ones)")
    ap.add_argument("--workdir", help="where configs, store and log go (default: a new temp dir)")
    ap.add_argument("--requests", type=int, default=4, help="requests per model (default 4)")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--parallel", type=int, default=2)
    return asyncio.run(demo(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
