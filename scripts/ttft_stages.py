"""Where a streaming request's time to first token goes, stage by stage, at N closed-loop clients.

    PYTHONPATH=. python scripts/ttft_stages.py [--model X.gguf] [--clients 16] [--rounds 6]
        [--max-tokens 64] [--n-batch 512] [--words 60]

The daemon runs in this process with its stages stamped (by request id, `time.monotonic`,
and the runner's step count): handler entered -> validated -> queued in the runner ->
admitted into a slot -> first token sampled -> delivered to the event loop -> first chunk
written to the socket. The clients run in a child process (aiohttp, streaming
/v1/completions, temperature 0.8, EOS suppressed) and stamp sent and first chunk received
(CLOCK_MONOTONIC is shared by processes). Prints each stage's median in ms and in steps
(steps are counted at their end), then the prompt steps' makeup. The first round is left
out (start-up). Without --model: a random-weight llama GGUF (tests/ggufmaker.py) shaped so
that a 16-token step takes a few ms on a CPU core. A diagnostic: it wraps internals.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

STAGES = ["sent", "handler", "validated", "queued", "admitted", "sampled", "delivered", "written", "recv"]
stamps: dict[str, dict[str, tuple[int | None, float]]] = {}
plans: list[tuple[float, int, int, int]] = []  # (start, generated tokens, prompt tokens, prompts ending)
runners: list[Any] = []


def stamp(rid: str, stage: str) -> None:
    steps = runners[0].stats.steps if runners else 0
    stamps.setdefault(rid, {}).setdefault(stage, (steps, time.monotonic()))


def instrument(n_batch: int) -> None:
    """Wrap the functions each stage passes through (first call per request wins)."""
    from appliance.api import completions, sse
    from appliance.api.state import REQUEST_ID
    from appliance.engine import runner as rm

    init, prepare, batch, admit, emit = (rm.Runner.__init__, rm.Runner._prepare, rm.Runner.generate_batch,
                                         rm.Runner._admit, rm.Runner._emit)
    put, plan_step, read_json, send_many = rm.Generation._put, rm.plan_step, completions.read_json, sse.SSEStream.send_many

    def init_(self: Any, *a: Any, **kw: Any) -> None:
        init(self, *a, **{**kw, "n_batch": n_batch})
        runners.append(self)

    async def read_json_(request: Any) -> Any:
        stamp(request[REQUEST_ID], "handler")
        return await read_json(request)

    def prepare_(self: Any, req: Any) -> Any:
        stamp(req.request_id, "validated")
        return prepare(self, req)

    def batch_(self: Any, reqs: Any) -> Any:
        gens = batch(self, reqs)
        for g in gens:
            stamp(g.request_id, "queued")
        return gens

    def admit_(self: Any) -> None:
        held = {id(s.job) for s in self._slots if s.job is not None}
        admit(self)
        for s in self._slots:
            if s.job is not None and id(s.job) not in held:
                stamp(s.job.gen.request_id, "admitted")

    def emit_(self: Any, s: Any, tok: int, idx: int) -> None:
        stamp(s.job.gen.request_id, "sampled")
        emit(self, s, tok, idx)

    def put_(self: Any, items: list[object]) -> None:
        stamp(self.request_id, "delivered")
        put(self, items)

    def plan_step_(slots: Any, budget: int) -> Any:
        p = plan_step(slots, budget)
        if p:
            plans.append((time.monotonic(), sum(not x.prompt for x in p.parts),
                          sum(len(x.tokens) for x in p.parts if x.prompt), sum(x.prompt and x.output for x in p.parts)))
        return p

    async def send_many_(self: Any, objs: list[dict[str, Any]]) -> None:
        await send_many(self, objs)
        stamp(self.request[REQUEST_ID], "written")

    rm.Runner.__init__, rm.Runner._prepare, rm.Runner.generate_batch = init_, prepare_, batch_  # type: ignore[method-assign]
    rm.Runner._admit, rm.Runner._emit, rm.Generation._put = admit_, emit_, put_  # type: ignore[method-assign]
    rm.plan_step, completions.read_json, sse.SSEStream.send_many = plan_step_, read_json_, send_many_  # type: ignore[assignment]


async def client_main(url: str, token: str, clients: int, rounds: int, max_tokens: int, words: int) -> None:
    import random
    import uuid

    import aiohttp

    vocab = "the quick brown fox jumps over a lazy dog while many small birds sing".split()
    rows: list[dict[str, Any]] = []

    async def client(k: int, s: aiohttp.ClientSession) -> None:
        rnd = random.Random(k)
        for rd in range(rounds):
            rid = uuid.uuid4().hex
            body = {"model": "m", "prompt": " ".join(rnd.choice(vocab) for _ in range(words)), "stream": True,
                    "max_tokens": max_tokens, "temperature": 0.8, "logit_bias": {"2": -100}}
            t0, times = time.monotonic(), []
            async with s.post(url + "/v1/completions", json=body,
                              headers={"Authorization": f"Bearer {token}", "x-request-id": rid}) as r:
                assert r.status == 200, await r.text()
                async for line in r.content:
                    if line.startswith(b"data: {") and b'"text":""' not in line:
                        times.append(time.monotonic())
            gaps = [b - a for a, b in zip(times, times[1:])]
            rows.append({"rid": rid, "round": rd, "sent": t0, "recv": times[0],
                         "itl": statistics.median(gaps) if gaps else None})

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        await asyncio.gather(*(client(k, s) for k in range(clients)))
    print(json.dumps(rows))


def report(rows: list[dict[str, Any]], clients: int) -> None:
    full = []
    for r in rows:
        if r["round"] == 0:
            continue
        t = {**stamps.get(r["rid"], {}), "sent": (None, r["sent"]), "recv": (None, r["recv"])}
        if all(k in t for k in STAGES):
            full.append(t)
    print(f"{clients} clients, {len(full)} requests (first round left out), {runners[0].stats.steps} steps")
    for a, b in zip(STAGES, STAGES[1:]):
        ms = statistics.median(1e3 * (t[b][1] - t[a][1]) for t in full)
        steps = (f"steps p50 {statistics.median(t[b][0] - t[a][0] for t in full):4.1f}"
                 if full[0][a][0] is not None and full[0][b][0] is not None else " " * 14)
        print(f"  {a:>9} -> {b:<9}  {steps}  ms p50 {ms:7.2f}")
    ttft = statistics.median(1e3 * (t["recv"][1] - t["sent"][1]) for t in full)
    itl = statistics.median(1e3 * r["itl"] for r in rows if r["itl"])
    print(f"TTFT p50 {ttft:.1f} ms, ITL p50 {itl:.2f} ms: TTFT = {ttft / itl:.1f} ITLs")
    durs = [(b[0] - a[0], a) for a, b in zip(plans, plans[1:])]
    pre = [(d, a) for d, a in durs if a[2]]
    dec = [d for d, a in durs if not a[2]]
    if pre and dec:
        print(f"prompt steps: {len(pre)}, p50 {1e3 * statistics.median(d for d, _ in pre):.1f} ms, "
              f"prompt tokens p50 {statistics.median(a[2] for _, a in pre)}; "
              f"decode-only steps: {len(dec)}, p50 {1e3 * statistics.median(dec):.1f} ms")
        print("prompts whose first token a prompt step sampled:", dict(collections.Counter(a[3] for _, a in pre)))


async def main(args: argparse.Namespace) -> None:
    from appliance.auth.keys import create_key
    from test_api_support import pull_all, serving, write_config

    if args.model is None:
        from ggufmaker import Shape, cached_gguf

        args.model = cached_gguf(Shape(n_embd=256, n_layer=4, n_head=4, n_head_kv=2, n_ff=512, name="ttft"), 0)
    instrument(args.n_batch)
    tmp = Path(tempfile.mkdtemp())
    settings = write_config(tmp, {"m": {"source": f"file://{Path(args.model).resolve()}", "context": args.context,
                                        "parallel": args.clients, "keep_alive": "forever"}})
    store = pull_all(settings)
    token, _ = create_key(settings.keys_path, "ttft")
    async with serving(settings, store=store) as d:
        p = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--client", d.url, token, str(args.clients), str(args.rounds),
            str(args.max_tokens), str(args.words), stdout=asyncio.subprocess.PIPE)
        out, _ = await p.communicate()
    report(json.loads(out), args.clients)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        u, tok, *n = sys.argv[2:]
        asyncio.run(client_main(u, tok, *map(int, n)))
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--n-batch", type=int, default=512, help="the runner's step budget (tokens)")
    ap.add_argument("--words", type=int, default=60, help="prompt length in words (60: ~70 tokens)")
    ap.add_argument("--context", type=int, default=512)
    asyncio.run(main(ap.parse_args()))
