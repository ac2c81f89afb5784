"""`appliance doctor`: is this machine ready to serve, and if not, what to fix.

Why one command: the failures that cost an operator an afternoon are environmental — a
llama-cpp-python built for the CPU on a GPU box, a missing CUDA toolkit, a port taken, a
model that cannot fit — and each has a one-line fix. Exit 0 when healthy, 1 when any
check failed (warnings alone do not fail).

Probes of the machine are injectable (`Probes`), so tests can fake a GPU's readings.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from ..config import Settings, load_settings
from ..errors import ApplianceError
from ..units import format_size

Level = Literal["ok", "warn", "fail"]
MARK = {"ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]"}


@dataclass(frozen=True)
class Finding:
    level: Level
    area: str
    message: str


@dataclass(frozen=True)
class Build:
    """What this llama-cpp-python was built for."""

    version: str | None
    gpu_offload: bool
    devices: list[tuple[str, str, int]]  # (name, description, total bytes), GPUs only

    @property
    def backend(self) -> str:
        if not self.gpu_offload or not self.devices:
            return "CPU"
        name = self.devices[0][0].upper()
        return "Metal" if name.startswith("MTL") or sys.platform == "darwin" else "CUDA"


# --- probes of the real machine ---------------------------------------------------------------


def probe_gpus() -> list[Any]:
    from ..hardware import gpu_stats

    return gpu_stats()


def probe_driver() -> str | None:
    try:
        import pynvml

        v = pynvml.nvmlSystemGetDriverVersion()  # works after gpu_stats() initialised NVML
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:
        return None


def probe_nvcc() -> str | None:
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.access("/usr/local/cuda/bin/nvcc", os.X_OK) else None)
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release ([\d.]+)", out)
    return f"{nvcc} (CUDA {m.group(1)})" if m else nvcc


def probe_build() -> Build | None:
    try:
        import llama_cpp
    except Exception:
        return None
    from ..hardware.ggml import DEV_TYPE_GPU, DEV_TYPE_IGPU, backend_devices

    gpus = [(name, desc, total) for typ, name, desc, _free, total in backend_devices()
            if typ in (DEV_TYPE_GPU, DEV_TYPE_IGPU)]
    return Build(getattr(llama_cpp, "__version__", None), bool(llama_cpp.llama_supports_gpu_offload()), gpus)


def probe_unit() -> str | None:
    """`systemctl is-active appliance` where systemd runs, else None."""
    if not shutil.which("systemctl") or not os.path.isdir("/run/systemd/system"):
        return None
    r = subprocess.run(["systemctl", "is-active", "appliance"], capture_output=True, text=True, timeout=20)
    return r.stdout.strip() or "unknown"


def probe_bind(host: str, port: int) -> OSError | None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return OSError(errno.EADDRNOTAVAIL, str(e))
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            return e
    return None


def probe_rpc_built() -> bool:
    from ..hardware import rpc

    return rpc.supported()


def probe_worker(endpoint: str) -> str | None:
    """Why the RPC worker cannot be reached, or None. A TCP connect only: a worker serves one
    client at a time, so speaking its protocol would wait behind a running daemon."""
    from ..errors import WorkerUnreachable
    from ..hardware.rpc import check_reachable

    try:
        check_reachable(endpoint)
    except WorkerUnreachable as e:
        return e.message
    return None


WORKER_READ_TIMEOUT_S = 5.0


def probe_worker_memory(endpoint: str) -> list[tuple[str, int, int]] | str:
    """(label, free, total) of each device of a reachable worker, or why it was not read.
    ggml-rpc's read waits without end while the worker serves another client (a running
    daemon with a model on it): it runs in a thread that is given up after a timeout."""
    import threading

    from ..scheduler.workermem import read_devices

    box: list[list[tuple[str, int, int]] | str] = []

    def run() -> None:
        try:
            box.append(read_devices(endpoint))
        except Exception as e:  # WorkerUnreachable, no RPC backend
            box.append(getattr(e, "message", str(e)))

    t = threading.Thread(target=run, name=f"doctor-rpc-{endpoint}", daemon=True)
    t.start()
    t.join(WORKER_READ_TIMEOUT_S)
    if not box:
        return (f"memory not read: no answer within {WORKER_READ_TIMEOUT_S:g}s (a worker serves one client "
                "at a time: the daemon may hold it; `appliance ps` shows what is charged there)")
    return box[0]


def probe_daemon(settings: Settings) -> dict[str, Any] | None:
    from ..service import adminclient

    try:
        return adminclient.status(settings)
    except ApplianceError:
        return {"unreachable": True}


def probe_ram() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


@dataclass
class Probes:
    gpus: Callable[[], list[Any]] = probe_gpus
    driver: Callable[[], str | None] = probe_driver
    nvcc: Callable[[], str | None] = probe_nvcc
    build: Callable[[], Build | None] = probe_build
    unit: Callable[[], str | None] = probe_unit
    bind: Callable[[str, int], OSError | None] = probe_bind
    daemon: Callable[[Settings], dict[str, Any] | None] = probe_daemon
    ram: Callable[[], int] = probe_ram
    rpc_built: Callable[[], bool] = probe_rpc_built
    worker: Callable[[str], str | None] = probe_worker
    worker_memory: Callable[[str], "list[tuple[str, int, int]] | str"] = probe_worker_memory
    extra: dict[str, Any] = field(default_factory=dict)


# --- the checks ------------------------------------------------------------------------------


def check_hardware(p: Probes) -> tuple[list[Finding], Build | None, list[Any]]:
    out: list[Finding] = []
    gpus = p.gpus()
    if gpus:
        driver = p.driver()
        for g in gpus:
            out.append(Finding("ok", "gpu", f"GPU {g.index}: {g.name}, {format_size(g.total)} "
                                            f"({format_size(g.free)} free)"))
        out.append(Finding("ok", "driver", f"NVIDIA driver {driver or 'version unknown'}"))
        nvcc = p.nvcc()
        out.append(Finding("ok", "toolkit", f"nvcc: {nvcc}") if nvcc else Finding(
            "warn", "toolkit", "nvcc (CUDA toolkit) not found: needed only to build llama-cpp-python "
                               "for CUDA (scripts/install.sh), not to run it"))
    else:
        out.append(Finding("ok", "gpu", "no NVIDIA GPU found (NVML): Metal or CPU"))
    build = p.build()
    if build is None:
        out.append(Finding("fail", "llama.cpp", "llama-cpp-python is not importable: reinstall (scripts/install.sh)"))
        return out, None, gpus
    devs = ", ".join(f"{d[1] or d[0]} ({format_size(d[2])})" for d in build.devices) or "none"
    out.append(Finding("ok", "llama.cpp", f"llama-cpp-python {build.version or '?'} built for {build.backend}; "
                                          f"GPU devices llama.cpp sees: {devs}"))
    if gpus and build.backend == "CPU":
        out.append(Finding(
            "fail", "llama.cpp",
            "!!! a GPU is present but llama-cpp-python was built for the CPU only: every model runs "
            "on the CPU, 10-50x slower. Rebuild: CMAKE_ARGS=-DGGML_CUDA=on pip install --force-reinstall "
            "--no-cache-dir llama-cpp-python (or re-run scripts/install.sh)",
        ))
    return out, build, gpus


def check_memory(settings: Settings, build: Build | None, p: Probes) -> list[Finding]:
    """Each present model's estimated need against the biggest device (or RAM)."""
    from ..store import Store

    out: list[Finding] = []
    try:
        from ..scheduler.estimate import GGUFEstimator
    except ImportError:
        return [Finding("warn", "memory", "no estimator available: memory not checked")]
    reserve = settings.config.memory.reserve
    if build is not None and build.backend != "CPU" and build.devices:
        kind = "metal" if build.backend == "Metal" else "cuda"
        capacity, where = max(d[2] for d in build.devices), "the largest GPU"
    else:
        kind, capacity, where = "cpu", p.ram(), "RAM"
    budget = settings.config.memory.budget
    if budget == "auto":
        usable, room = max(0, capacity - reserve), f"{where} has {{}} after the {format_size(reserve)} reserve"
    else:  # a fixed budget is what the scheduler lets models use, whatever the device holds
        usable = min(budget if isinstance(budget, int) else max(budget), capacity)
        room = f"memory.budget allows {{}} on {where}"
    store = Store(settings.config.store.path)  # doctor looks; it creates nothing
    est = GGUFEstimator()
    pinned_total = 0
    for mid, cfg in settings.catalog.models.items():
        paths = store.model_paths(mid, cfg)
        if not paths:
            continue
        try:
            layers = est.layer_count(paths)
            gl = layers if cfg.gpu_layers in ("all", "auto") else min(int(cfg.gpu_layers), layers)
            need = est.estimate(paths, cfg, gpu_layers=gl, device=kind).total  # type: ignore[arg-type]
        except Exception as e:
            out.append(Finding("fail", "memory", f"{mid}: cannot read the GGUF header: {e}"))
            continue
        if cfg.pinned:
            pinned_total += need
        msg = f"{mid}: needs about {format_size(need)} (context {cfg.context} x {cfg.parallel} slots); " \
              + room.format(format_size(usable))
        if need <= usable:
            out.append(Finding("ok", "memory", msg))
        elif cfg.gpu_layers == "auto" and kind != "cpu":
            out.append(Finding("warn", "memory", msg + ": only part of it will be offloaded"))
        else:
            out.append(Finding("fail", "memory", msg + ": it will not load (lower context or parallel, "
                                                        "a smaller quantization, or gpu_layers = \"auto\")"))
    if pinned_total > usable:
        out.append(Finding("fail", "memory", f"pinned models need {format_size(pinned_total)} together, more than "
                                             f"{format_size(usable)}: the daemon will refuse to start"))
    return out


def check_store(settings: Settings) -> list[Finding]:
    from ..store import Store

    out: list[Finding] = []
    path = settings.config.store.path
    if not settings.catalog.models:
        return [Finding("warn", "store", f"the catalog is empty ({settings.catalog.path})")]
    if not path.is_dir():  # doctor looks; it creates nothing (the first pull or serve does)
        return [Finding("warn", "store", f"{path} does not exist yet; `appliance pull` creates it")]
    store = Store(path)
    for mid, cfg in settings.catalog.models.items():
        try:
            st = store.state(mid, cfg)
        except ApplianceError as e:
            out.append(Finding("fail", "store", f"{mid}: {e.message}"))
            continue
        if st.state == "missing":
            out.append(Finding("warn", "store", f"{mid}: missing; run `appliance pull {mid}`"))
        else:
            size = f", {format_size(st.size)}" if st.size else ""
            out.append(Finding("ok", "store", f"{mid}: {st.state}{size}"))
    return out


def check_workers(settings: Settings, p: Probes) -> list[Finding]:
    """RPC workers (`[cluster] rpc`, models' `rpc`): built for, and reachable from, this node."""
    users: dict[str, list[str]] = {}
    for mid, cfg in settings.catalog.models.items():
        for ep in settings.config.cluster.rpc if cfg.rpc is None else cfg.rpc:
            users.setdefault(ep, []).append(mid)
    if not users:
        return []
    if not p.rpc_built():
        return [Finding("fail", "rpc", "models name RPC workers but llama-cpp-python was built without "
                                       "-DGGML_RPC=ON: rerun scripts/install.sh")]
    out = []
    for ep, mids in users.items():
        why = p.worker(ep)
        if why is None:
            out.append(Finding("ok", "rpc", f"worker {ep} reachable (models: {', '.join(mids)})"))
            mem = p.worker_memory(ep)
            if isinstance(mem, str):
                out.append(Finding("warn", "rpc", f"worker {ep}: {mem}"))
            for label, free, total in [] if isinstance(mem, str) else mem:
                out.append(Finding("ok", "rpc", f"{label}: {format_size(free)} free of {format_size(total)}"))
        else:
            out.append(Finding("fail", "rpc", f"{why}; models {', '.join(mids)} will not load until it is "
                                              "(`appliance worker` on that machine, docs/cluster.md)"))
    return out


def check_port(settings: Settings, p: Probes, daemon: dict[str, Any] | None) -> list[Finding]:
    server = settings.config.server
    err = p.bind(server.host, server.port)
    where = f"{server.host}:{server.port}"
    if err is None:
        return [Finding("ok", "port", f"{where} is free")]
    if daemon and not daemon.get("unreachable"):
        return [Finding("ok", "port", f"{where} is served by the running appliance ({daemon.get('url', '')})")]
    if err.errno == errno.EADDRINUSE:
        return [Finding("fail", "port", f"{where} is in use by another program: stop it or set server.port")]
    return [Finding("fail", "port", f"cannot listen on {where}: {err.strerror or err}")]


def check_service(p: Probes, daemon: dict[str, Any] | None) -> list[Finding]:
    out: list[Finding] = []
    state = p.unit()
    if state is not None:
        level: Level = "ok" if state in ("active", "inactive", "activating", "reloading") else "fail"
        hint = "" if level == "ok" else ": see `journalctl -u appliance -e`"
        out.append(Finding(level, "service", f"systemd unit appliance: {state}{hint}"))
    if daemon is None:
        out.append(Finding("ok", "daemon", "no daemon running for this store"))
    elif daemon.get("unreachable"):
        out.append(Finding("warn", "daemon", "a daemon runs but its admin socket refused us: run as root or the service user"))
    else:
        loaded = ", ".join(daemon.get("loaded", [])) or "none"
        out.append(Finding("ok", "daemon", f"running at {daemon.get('url', '?')}; loaded: {loaded}"))
    return out


def diagnose(config: str | None, models: str | None, probes: Probes | None = None) -> list[Finding]:
    p = probes or Probes()
    findings, build, _ = check_hardware(p)
    try:
        settings = load_settings(config, models)
    except ApplianceError as e:
        return findings + [Finding("fail", "config", e.message)]
    where = ", ".join(str(x) for x in (settings.config_path, settings.catalog.path if settings.catalog.exists else None) if x)
    findings.append(Finding("ok", "config", f"valid ({where or 'defaults, no files found'})"))
    findings += check_store(settings)
    findings += check_memory(settings, build, p)
    findings += check_workers(settings, p)
    daemon = p.daemon(settings)
    findings += check_port(settings, p, daemon)
    findings += check_service(p, daemon)
    return findings


# --- the command -------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("doctor", parents=[common], help="check hardware, build, config, store and port")
    p.add_argument("--json", action="store_true", help="one JSON object per finding")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, probes: Probes | None = None) -> int:
    findings = diagnose(args.config, args.models, probes)
    for f in findings:
        if args.json:
            print(json.dumps(f.__dict__))
        else:
            print(f"{MARK[f.level]} {f.area}: {f.message}")
    failed = [f for f in findings if f.level == "fail"]
    if not args.json:
        print(f"{len(failed)} problem(s) found" if failed else "healthy")
    return 1 if failed else 0
