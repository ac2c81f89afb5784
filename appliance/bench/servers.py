"""Start the appliance and its peers on one model with the same settings, and stop them.

Why pinned flags: llama-server's defaults differ from ours in ways that change the figures
(a unified KV cache, automatic fitting, a prompt cache in RAM, its own thread count), so a
comparison is only fair when every server gets the same context per slot, slots, KV layout and
type, flash attention, batch sizes, GPU layers and threads (DESIGN.md, "Fair benchmarks").

Kinds:
  appliance         `appliance serve` with a generated config, an admin key, the model pulled
                    from a file:// source into its own store under the work directory
  llama-server      llama.cpp's server, `-np parallel`, `-c context × parallel`, per-slot KV
  llama-server-np1  the same with one slot (`-c context`): what a naive deployment gets
  llama-server-bs   llama-server with `--backend-sampling` (its in-graph sampling): its fastest
  llama-cpp-python  `python -m llama_cpp.server` (its `server` extra): one request at a time

Two GPUs (`Settings.gpus`): "per-model" gives the appliance the model twice, `gpu = 0` and
`gpu = 1`, and every llama-server peer two processes (`-dev CUDA0`, `-dev CUDA1`); "split" gives
the appliance `gpu = "split"` and llama-server `-sm layer` over every GPU it sees.
`pin_devices` False (a rehearsal on a machine without GPUs) leaves the peers' device flags
out; the appliance ignores `gpu` by itself there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Literal

import aiohttp
import tomlkit

from ..errors import BenchError, UsageError
from .load import Target

KINDS = ("appliance", "llama-server", "llama-server-np1", "llama-server-bs", "llama-cpp-python")
LLAMA_SERVERS = ("llama-server", "llama-server-np1", "llama-server-bs")
MODEL_ID = "bench"
GGML_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}  # llama-cpp-python's server takes ggml type numbers


@dataclass(frozen=True)
class Settings:
    """What every server is pinned to."""

    model: Path
    context: int = 2048  # tokens per slot
    parallel: int = 16
    gpu_layers: int | None = None  # None: all layers
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    batch: int = 512  # -b and -ub alike
    kv_cache_type: str = "f16"
    max_waiting: int = 16  # the appliance's queue.max_waiting
    gpus: Literal["per-model", "split"] | None = None  # None: one GPU (or the CPU)
    pin_devices: bool = True  # False: no device flags for the peers (a CPU rehearsal of `gpus`)

    def model_ids(self) -> list[str]:
        """The appliance's model ids: one per GPU with "per-model", else one."""
        return [f"{MODEL_ID}-gpu{i}" for i in range(2)] if self.gpus == "per-model" else [MODEL_ID]

    def gpu_of(self, index: int) -> int | str | None:
        """models.toml's `gpu` for the index-th model id (None: the key is left out)."""
        if self.gpus == "per-model":
            return index
        return "split" if self.gpus == "split" else None

    @property
    def ngl(self) -> int:
        return 999 if self.gpu_layers is None else self.gpu_layers

    def describe(self) -> dict[str, object]:
        return {"model": str(self.model), "context": self.context, "parallel": self.parallel,
                "gpu_layers": "all" if self.gpu_layers is None else self.gpu_layers,
                "threads": self.threads, "batch": self.batch, "ubatch": self.batch,
                "kv_cache_type": self.kv_cache_type, "kv_unified": False, "flash_attn": "auto",
                "max_waiting": self.max_waiting,
                **({"gpus": self.gpus, "pin_devices": self.pin_devices} if self.gpus else {})}


@dataclass
class Spec:
    """How to start one server: argv, readiness URL, and what the bench sends it."""

    kind: str
    argv: list[str]
    port: int
    ready_path: str
    api_key: str | None = None
    model: str = MODEL_ID
    device: int | None = None  # the GPU of a per-model peer process

    @property
    def name(self) -> str:
        """The kind, with the GPU of a per-model peer: unique among the specs of one run."""
        return self.kind if self.device is None else f"{self.kind}-gpu{self.device}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def target(self) -> Target:
        return Target(self.name, self.url, self.api_key, self.model)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def device_flags(s: Settings, device: int | None) -> list[str]:
    """llama-server's GPU flags for the two-GPU modes: one CUDA device per process, or layers
    split over all (none when `pin_devices` is off or for one GPU)."""
    if not s.pin_devices or s.gpus is None:
        return []
    if s.gpus == "split":
        return ["-sm", "layer"]
    if device is None:
        raise ValueError("a per-model llama-server needs its device")
    return ["-dev", f"CUDA{device}", "-sm", "none"]


def llama_server_argv(binary: str, s: Settings, port: int, parallel: int, device: int | None = None) -> list[str]:
    """llama-server with every flag that matters pinned to ours (`--no-repack` where our runner
    turns llama.cpp's extra buffer types off, see engine/cpufeatures), on `device` with
    `gpus = "per-model"`."""
    from ..engine.cpufeatures import extra_buffers_safe

    return [
        binary, "-m", str(s.model), "--host", "127.0.0.1", "--port", str(port),
        "-c", str(s.context * parallel), "-np", str(parallel), "--no-kv-unified", "--swa-full",
        "-fa", "auto", "-b", str(s.batch), "-ub", str(s.batch), "-ngl", str(s.ngl),
        "-ctk", s.kv_cache_type, "-ctv", s.kv_cache_type, "--cache-ram", "0", "--fit", "off",
        "-t", str(s.threads), "-tb", str(s.threads), "-a", MODEL_ID, "--no-webui",
        *([] if extra_buffers_safe() else ["--no-repack"]), *device_flags(s, device),
    ]


def llama_cpp_python_argv(s: Settings, port: int) -> list[str]:
    """llama-cpp-python's own server (single sequence: -np has no equivalent there)."""
    return [
        sys.executable, "-m", "appliance.bench.lcpserver", "--model", str(s.model), "--model_alias", MODEL_ID,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(s.context),
        "--n_batch", str(s.batch), "--n_ubatch", str(s.batch), "--n_gpu_layers", str(-1 if s.gpu_layers is None else s.gpu_layers),
        "--flash_attn", "true", "--n_threads", str(s.threads), "--n_threads_batch", str(s.threads),
        "--type_k", str(GGML_TYPES[s.kv_cache_type]), "--type_v", str(GGML_TYPES[s.kv_cache_type]),
        "--verbose", "false", "--interrupt_requests", "false",  # its default cuts a stream short when the next request arrives
    ]


def appliance_files(workdir: Path, s: Settings, port: int) -> tuple[Path, Path]:
    """appliance.toml and models.toml for the run (the model comes from a file:// source),
    written by tomlkit so that any path (quotes, backslashes) stays one TOML string."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg, models = workdir / "appliance.toml", workdir / "models.toml"
    cfg.write_text(tomlkit.dumps({
        "server": {"host": "127.0.0.1", "port": port},
        "store": {"path": str(workdir / "store")},
        "memory": {"reserve": "1GiB"},
        "queue": {"max_waiting": s.max_waiting},
    }))
    entry = {
        "source": f"file://{s.model.resolve()}",
        "context": s.context,
        "parallel": s.parallel,
        "gpu_layers": "all" if s.gpu_layers is None else s.gpu_layers,
        "kv_cache_type": s.kv_cache_type,
        "keep_alive": "forever",
    }
    pins = [{} if (gpu := s.gpu_of(i)) is None else {"gpu": gpu} for i in range(len(s.model_ids()))]
    models.write_text(tomlkit.dumps({mid: {**entry, **pin} for mid, pin in zip(s.model_ids(), pins)}))
    return cfg, models


def specs_for(kind: str, s: Settings, workdir: Path, llama_server: str | None) -> list[Spec]:
    """`kind`'s processes: one, or one per GPU for a llama-server peer with "per-model"."""
    if s.gpus == "per-model" and kind in LLAMA_SERVERS:
        return [spec_for(kind, s, workdir, llama_server, device=i) for i in range(2)]
    if s.gpus == "per-model" and kind != "appliance":
        raise UsageError(f"--gpus per-model: {kind} cannot be pinned to a GPU (llama-server kinds only)")
    return [spec_for(kind, s, workdir, llama_server)]


def spec_for(kind: str, s: Settings, workdir: Path, llama_server: str | None, device: int | None = None) -> Spec:
    """Everything needed to start `kind`, checked before anything starts."""
    port = free_port()
    if kind == "appliance":
        from ..auth import create_key

        cfg, models = appliance_files(workdir / "appliance", s, port)
        keys = cfg.parent / "keys.toml"
        keys.unlink(missing_ok=True)
        token, _ = create_key(keys, "bench", scope="admin")
        key_file = cfg.parent / "key"  # for scripts that talk to this appliance again later
        key_file.write_text(token + "\n")
        key_file.chmod(0o600)
        argv = [sys.executable, "-m", "appliance", "serve", "--config", str(cfg), "--models", str(models)]
        return Spec(kind, argv, port, "/ready", api_key=token, model=s.model_ids()[0])
    if kind in LLAMA_SERVERS:
        if llama_server is not None and not Path(llama_server).is_file():
            raise UsageError(f"--llama-server {llama_server}: no such file")
        binary = llama_server or shutil.which("llama-server")
        if not binary or not Path(binary).is_file():
            raise UsageError(f"--compare {kind}: llama-server not found (give --llama-server PATH; "
                             "docs/benchmarks.md shows how to build it from the llama-cpp-python sdist)")
        parallel = 1 if kind == "llama-server-np1" else s.parallel
        argv = llama_server_argv(binary, s, port, parallel, device)
        if kind == "llama-server-bs":
            argv.append("--backend-sampling")
        return Spec(kind, argv, port, "/health", device=device)
    if kind == "llama-cpp-python":
        try:
            import fastapi  # noqa: F401  (the `server` extra's first requirement)
            import sse_starlette  # noqa: F401
            import uvicorn  # noqa: F401
            import starlette_context  # noqa: F401
            import pydantic_settings  # noqa: F401
        except ImportError as e:
            raise UsageError(f"--compare llama-cpp-python: its server is not installed ({e}; "
                             "pip install 'llama-cpp-python[server]')") from None
        return Spec(kind, llama_cpp_python_argv(s, port), port, "/v1/models")
    raise UsageError(f"--compare {kind!r}: expected one of {', '.join(KINDS[1:])}")


async def prepare_appliance(spec: Spec, log: Path) -> None:
    """Pull the model into the run's store (hash + copy once; later runs find it verified)."""
    cfg, models = spec.argv[-3], spec.argv[-1]
    with log.open("ab") as out:  # no ids: every model of the run's models.toml
        p = await asyncio.create_subprocess_exec(sys.executable, "-m", "appliance", "pull",
                                                 "--config", cfg, "--models", models,
                                                 stdout=out, stderr=asyncio.subprocess.STDOUT)
        if await p.wait() != 0:
            raise BenchError(f"appliance pull failed: {_tail(log)}")


def _tail(log: Path, n: int = 600) -> str:
    try:
        text = log.read_text(errors="replace").strip()
    except OSError:
        return "(no log)"
    return " | ".join(text[-n:].splitlines()[-6:]) or "(empty log)"


@dataclass
class Running:
    spec: Spec
    proc: asyncio.subprocess.Process
    log: Path


async def _wait_ready(r: Running, timeout_s: float) -> None:
    """Poll the readiness URL until it answers 200 (servers load the model first)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    headers = {"Authorization": f"Bearer {r.spec.api_key}"} if r.spec.api_key else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            if r.proc.returncode is not None:
                raise BenchError(f"{r.spec.name} exited ({r.proc.returncode}) before serving: {_tail(r.log)}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                async with session.get(r.spec.url + r.spec.ready_path, headers=headers) as resp:
                    if resp.status == 200:
                        return
            if loop.time() > deadline:
                raise BenchError(f"{r.spec.name} did not become ready in {timeout_s:.0f}s: {_tail(r.log)}")
            await asyncio.sleep(0.25)


async def start(spec: Spec, logdir: Path, env: dict[str, str] | None = None, timeout_s: float = 900.0) -> Running:
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{spec.name}.log"
    log.write_bytes(b"")
    if spec.kind == "appliance":
        await prepare_appliance(spec, log)
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(*spec.argv, stdout=out, stderr=asyncio.subprocess.STDOUT,
                                                    env={**os.environ, **(env or {})}, start_new_session=True)
    r = Running(spec, proc, log)
    try:
        await _wait_ready(r, timeout_s)
    except BaseException:
        await stop(r)
        raise
    return r


async def stop(r: Running, grace_s: float = 30.0) -> None:
    """SIGTERM (the appliance drains), then SIGKILL after `grace_s`."""
    if r.proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        r.proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(r.proc.wait(), grace_s)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            r.proc.kill()
        await r.proc.wait()


@contextlib.asynccontextmanager
async def running(specs: list[Spec], logdir: Path) -> AsyncIterator[list[Running]]:
    """Start the servers one after another (each reads free memory at its own load, so none
    races another's allocation), stop them all on the way out."""
    started: list[Running] = []
    try:
        for spec in specs:
            started.append(await start(spec, logdir))
        yield started
    finally:
        for r in reversed(started):
            await stop(r)
