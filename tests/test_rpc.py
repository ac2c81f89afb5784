"""llama.cpp's RPC backend: `appliance worker` on 127.0.0.1 and models split over it.

Real workers (the CLI in a subprocess), real sockets, real llama.cpp. Needs a
llama-cpp-python built with -DGGML_RPC=ON (scripts/test.sh makes sure of it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import llama_cpp
import pytest

from appliance.cli import main
from appliance.cli.live import device_cell
from appliance.config import ConfigError, ModelConfig, load_settings
from appliance.engine.runner import Runner
from appliance.engine.types import GenerationRequest, SamplingParams
from appliance.errors import WorkerUnreachable
from appliance.hardware import rpc

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not llama_cpp.llama_supports_rpc(),
                                reason="llama-cpp-python built without -DGGML_RPC=ON")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_worker(port: int) -> subprocess.Popen[str]:
    """`appliance worker` on 127.0.0.1:port, returned once it accepts connections."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "worker", "--port", str(port), "--threads", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            rpc.check_reachable(f"127.0.0.1:{port}", timeout=1)
            return proc
        except WorkerUnreachable:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)  # polling a condition (the port opens), not waiting for time to pass


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    if proc.stdout:
        proc.stdout.close()


@pytest.fixture
def worker() -> Iterator[str]:
    port = free_port()
    proc = start_worker(port)
    yield f"127.0.0.1:{port}"
    stop(proc)


def _cfg(path: Path) -> ModelConfig:
    return ModelConfig(source=f"file://{path}", context=128, parallel=1)


async def _greedy(r: Runner) -> list[int]:
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True, frequency_penalty=30.0)
    toks: list[int] = []
    async for d in r.generate(GenerationRequest("The quick brown fox", params)):
        toks.extend(d.token_ids)
    return toks


async def test_split_over_a_worker_gives_the_local_greedy_output(tiny_gguf: Path, worker: str) -> None:
    """Half the layers (1 of 2) on the worker's device: same tokens as fully local, and the
    load reports memory on both sides."""
    with Runner([tiny_gguf], _cfg(tiny_gguf), n_threads=1) as local:
        expected = await _greedy(local)
    with Runner([tiny_gguf], _cfg(tiny_gguf), n_threads=1, n_gpu_layers=1, workers=[worker]) as split:
        got = await _greedy(split)
        model_bufs = split.buffers.by_kind["model"]
    assert len(expected) == 16 and len(set(expected)) > 4
    assert got == expected
    remote = {dev: n for dev, n in model_bufs.items() if dev.startswith("RPC")}
    local_side = {dev: n for dev, n in model_bufs.items() if not dev.startswith("RPC")}
    assert remote and all(n > 0 for n in remote.values()), model_bufs
    assert local_side and all(n > 0 for n in local_side.values()), model_bufs
    devs = rpc.remote_devices([worker])
    assert len(devs) == 1 and devs[0].endpoint == worker and 0 < devs[0].free <= devs[0].total


def test_unreachable_worker_is_named_and_nothing_loads(tiny_gguf: Path) -> None:
    """No process-killing abort inside llama.cpp: a clear error naming the worker."""
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(WorkerUnreachable) as e:
        Runner([tiny_gguf], _cfg(tiny_gguf), n_threads=1, n_gpu_layers=1, workers=[dead])
    assert dead in e.value.message and e.value.status == 503


async def test_worker_back_loads_again(tiny_gguf: Path) -> None:
    port = free_port()
    ep = f"127.0.0.1:{port}"
    with pytest.raises(WorkerUnreachable):
        Runner([tiny_gguf], _cfg(tiny_gguf), n_threads=1, n_gpu_layers=1, workers=[ep])
    proc = start_worker(port)
    try:
        with Runner([tiny_gguf], _cfg(tiny_gguf), n_threads=1, n_gpu_layers=1, workers=[ep]) as r:
            assert len(await _greedy(r)) == 16
    finally:
        stop(proc)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", ""])
def test_worker_refuses_a_wildcard_address_without_allow_public(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--host", host]) == 2
    err = capsys.readouterr().err
    assert "every interface" in err and "--allow-public" in err


def test_worker_rejects_an_unknown_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--port", str(free_port()), "--device", "NoSuchGPU7"]) == 1
    err = capsys.readouterr().err
    assert "NoSuchGPU7" in err and "CPU" in err


def test_rpc_lists_are_validated(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[m]\nsource = "file:///x.gguf"\nrpc = ["10.0.0.2"]\n')
    with pytest.raises(ConfigError) as e:
        load_settings(models=models)
    assert "m.rpc" in e.value.message and "host:port" in e.value.message
    models.write_text('[m]\nsource = "file:///x.gguf"\nrpc = ["[fd00::2]:50052"]\n')
    with pytest.raises(ConfigError) as e:
        load_settings(models=models)
    assert "IPv6" in e.value.message
    models.write_text('[m]\nsource = "file:///x.gguf"\nrpc = ["10.0.0.2:50052", "gpu-box.lan:50052"]\n')
    cfg = tmp_path / "appliance.toml"
    cfg.write_text('[cluster]\nrpc = ["10.0.0.3:50052", "10.0.0.3:50052"]\n')
    with pytest.raises(ConfigError) as e:
        load_settings(config=cfg, models=models)
    assert "cluster.rpc" in e.value.message and "twice" in e.value.message
    cfg.write_text('[cluster]\nrpc = ["10.0.0.3:50052"]\n')
    s = load_settings(config=cfg, models=models)
    assert s.catalog.models["m"].rpc == ["10.0.0.2:50052", "gpu-box.lan:50052"]
    assert s.config.cluster.rpc == ["10.0.0.3:50052"]


async def _complete(s: "aiohttp.ClientSession", url: str, model: str, max_tokens: int = 2,
                    logit_bias: dict[str, int] | None = None) -> tuple[int, dict]:
    """A short completion: (status, body)."""
    body = {"model": model, "prompt": "hi", "max_tokens": max_tokens, "logit_bias": logit_bias or {}}
    async with s.post(url + "/v1/completions", json=body) as r:
        return r.status, await r.json()


async def _admin_state(s: "aiohttp.ClientSession", url: str, model: str) -> dict:
    async with s.get(url + "/admin/models") as r:
        assert r.status == 200
        rows = await r.json()
    rows = rows.get("data", rows) if isinstance(rows, dict) else rows
    return next(row for row in rows if row["id"] == model)


async def test_daemon_survives_a_worker_killed_mid_request(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """The worker dies while the split model streams: that request fails with a 5xx naming the
    worker, the model is unloaded, the daemon and the other model go on; once the worker is
    back, the next request loads the model again."""
    import asyncio

    import aiohttp

    from test_api_support import pull_all, serving, write_config

    port = free_port()
    ep = f"127.0.0.1:{port}"
    proc = start_worker(port)
    settings = write_config(tmp_path, {
        "split": {"source": f"file://{tiny_models['a']}", "context": 4096, "parallel": 1, "gpu_layers": 1,
                  "rpc": [ep], "keep_alive": "forever"},
        "local": {"source": f"file://{tiny_models['b']}", "context": 256, "parallel": 1},
    })
    store = pull_all(settings)
    no_eos = {"2": -100}
    try:
        async with serving(settings, store=store) as d, aiohttp.ClientSession() as s:
            url = d.url

            assert (await _complete(s, url, "split", max_tokens=4, logit_bias=no_eos))[0] == 200
            row = await _admin_state(s, url, "split")
            assert row["state"] == "loaded" and row["workers"] == [ep]
            body = {"model": "split", "prompt": "go", "max_tokens": 4000, "logit_bias": no_eos, "stream": True}
            async with s.post(url + "/v1/completions", json=body) as r:
                assert r.status == 200
                assert (await r.content.readline()).startswith(b"data: ")  # generating
                stop(proc)  # the worker dies mid-request
                rest = (await r.read()).decode()
            assert "worker_lost" in rest and ep in rest
            assert "[DONE]" not in rest or rest.index("worker_lost") < rest.index("[DONE]")
            for _ in range(400):  # the unload runs on the daemon's loop after the request ends
                if (await _admin_state(s, url, "split"))["state"] == "unloaded":
                    break
                await asyncio.sleep(0.05)
            assert (await _admin_state(s, url, "split"))["state"] == "unloaded"
            status, err = await _complete(s, url, "split", max_tokens=4, logit_bias=no_eos)  # the worker is still down: a clear 503
            assert status == 503 and err["error"]["code"] == "worker_unreachable" and ep in err["error"]["message"]
            assert (await _complete(s, url, "local", max_tokens=4, logit_bias=no_eos))[0] == 200
            async with s.get(url + "/health") as r:
                assert r.status == 200
            proc = start_worker(port)  # back: the next request loads the model again
            status, out = await _complete(s, url, "split", max_tokens=4, logit_bias=no_eos)
            assert status == 200 and out["usage"]["completion_tokens"] == 4
    finally:
        stop(proc)


async def test_a_model_too_big_for_the_head_budget_loads_with_a_worker(tmp_path: Path, tiny_models: dict[str, Path],
                                                                         worker: str) -> None:
    """memory.budget is one byte short of the whole model: refused on the head alone, but with
    one of its layers on a worker the head holds only its share, so it loads and answers, and
    /admin/models shows the charge on each device."""
    import aiohttp

    from test_api_support import pull_all, serving, write_config

    from appliance.scheduler.estimate import GGUFEstimator

    models = {"alone": {"source": f"file://{tiny_models['a']}", "context": 256, "parallel": 1},
              "split": {"source": f"file://{tiny_models['a']}", "context": 256, "parallel": 1, "gpu_layers": 1,
                        "rpc": [worker]}}
    settings = write_config(tmp_path, models)
    whole = GGUFEstimator().estimate([tiny_models["a"]], settings.catalog.models["alone"], gpu_layers=0,
                                     device="cpu").total
    with (tmp_path / "appliance.toml").open("a") as f:
        f.write(f"[memory]\nbudget = {whole - 1}\nreserve = 0\n")
    settings = load_settings(tmp_path / "appliance.toml", tmp_path / "models.toml")
    store = pull_all(settings)
    async with serving(settings, store=store) as d, aiohttp.ClientSession() as s:
        status, err = await _complete(s, d.url, "alone")
        assert err["error"]["code"] == "insufficient_memory", (status, err)  # the head alone: too small
        status, out = await _complete(s, d.url, "split")
        assert status == 200, out
        row = await _admin_state(s, d.url, "split")
    assert row["state"] == "loaded"
    remote = {k: n for k, n in row["charges"].items() if k.startswith(f"rpc:{worker}")}
    assert set(row["charges"]) == {"cpu", *remote} and len(remote) == 1, row["charges"]
    assert all(n > 0 for n in row["charges"].values()) and row["charges"]["cpu"] < whole - 1
    cell = device_cell(row)  # appliance ps: each device with its share
    assert cell.count(",") == 1 and "cpu " in cell and f"rpc:{worker}#0 " in cell


async def test_a_dead_worker_at_plan_time_is_a_clear_503_and_nothing_else_stops(tmp_path: Path,
                                                                               tiny_models: dict[str, Path]) -> None:
    """Its memory cannot be read: the request gets 503 worker_unreachable naming it (the read
    runs off the event loop, so /health and the other model answer meanwhile and after)."""
    import aiohttp

    from test_api_support import pull_all, serving, write_config

    dead = f"127.0.0.1:{free_port()}"
    settings = write_config(tmp_path, {
        "split": {"source": f"file://{tiny_models['a']}", "context": 256, "parallel": 1, "gpu_layers": 1,
                  "rpc": [dead]},
        "local": {"source": f"file://{tiny_models['b']}", "context": 256, "parallel": 1},
    })
    store = pull_all(settings)
    async with serving(settings, store=store) as d, aiohttp.ClientSession() as s:
        status, err = await _complete(s, d.url, "split")
        assert status == 503 and err["error"]["code"] == "worker_unreachable", (status, err)
        assert dead in err["error"]["message"]
        assert (await _complete(s, d.url, "local"))[0] == 200
        row = await _admin_state(s, d.url, "split")
        assert row["state"] == "unloaded" and row["charges"] == {}
        async with s.get(d.url + "/health") as r:
            assert r.status == 200


def test_doctor_shows_each_worker_device_and_its_memory(tmp_path: Path, worker: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Read through ggml-rpc from the real worker: its CPU device, free of total."""
    (tmp_path / "appliance.toml").write_text(f'[cluster]\nrpc = ["{worker}"]\n')
    (tmp_path / "models.toml").write_text(f'[m]\nsource = "file://{tmp_path}/m.gguf"\n')
    main(["doctor", "--config", str(tmp_path / "appliance.toml"), "--models", str(tmp_path / "models.toml")])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if f"rpc:{worker}#0:" in x)
    assert line.startswith("[ ok ]") and " free of " in line, out
