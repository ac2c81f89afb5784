"""llama.cpp's RPC backend (ggml-rpc): remote devices for the head node, and the worker's server.

llama-cpp-python 0.3.36 binds none of ggml-rpc, so the functions are looked up through ggml's
backend registry (`ggml_backend_reg_get_proc_address(reg("RPC"), name)`), which works whether
the RPC backend is linked in or loaded as a module. A build without `-DGGML_RPC=ON` has no
"RPC" registry: `RpcUnavailable`.

Hazards, both `GGML_ABORT` (the whole process dies) in llama.cpp's RPC client:
- it cannot connect to a worker: every entry point here first opens a plain TCP connection
  to each endpoint with a timeout (`check_reachable`) and raises `WorkerUnreachable` naming
  it; only then does it call into llama.cpp. Workers serve one client connection at a time,
  so the check never speaks the protocol (a HELLO would wait behind this process's own open
  connection to that worker).
- a worker dies mid-request: the client's per-endpoint dispatcher thread aborts. `_on_abort`
  (ggml's abort callback, set once RPC is used) tells the `watch()`ers (the runners with
  workers) and parks that thread for good instead of returning into abort(). The runner
  waiting on it is stuck inside llama_decode: it fails its requests and is abandoned (its
  memory is not freed). llama.cpp keeps the dead dispatcher under the endpoint's text, so
  the next load names the worker by an alias (`ggml_endpoint`: the port zero-padded), which
  llama.cpp takes for a new server and connects afresh.

The remote devices are kept out of ggml's global device list (never `ggml_backend_register`):
only models whose catalog entry names workers see them, through `model_params.devices`.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import EngineError, WorkerUnreachable
from .ggml import DEV_TYPE_GPU, DEV_TYPE_IGPU, _libggml, device_handles, device_memory

DEFAULT_PORT = 50052  # llama.cpp's rpc-server default
CONNECT_TIMEOUT_S = 3.0
LOSS_SETTLE_S = 3.0  # how long a broken connection's worker may still accept before it is ruled alive
LOSS_POLL_S = 0.02

log = logging.getLogger(__name__)
_lock = threading.Lock()
_fns: "_RpcFns | None" = None
_listeners: list[Callable[[str], None]] = []
_generation: dict[str, int] = {}  # endpoint -> workers lost so far (aliases used up)


class RpcUnavailable(EngineError):
    """This llama-cpp-python was built without the RPC backend (-DGGML_RPC=ON)."""

    def __init__(self) -> None:
        super().__init__("this llama-cpp-python was built without the RPC backend: "
                         "reinstall it with CMAKE_ARGS=\"-DGGML_RPC=ON\" (scripts/install.sh does)")


def parse_endpoint(text: str) -> tuple[str, int]:
    """`host:port` -> (host, port); ValueError with the reason.

    llama.cpp splits an endpoint at its first colon, so an IPv6 literal cannot be given:
    name such a worker by a hostname (or use IPv4).
    """
    if text.count(":") > 1 or text.startswith("["):
        raise ValueError(f"llama.cpp's RPC client takes no IPv6 address; use a hostname, got {text!r}")
    host, sep, port = text.partition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"worker must be host:port, got {text!r}")
    if not 0 < int(port) < 65536:
        raise ValueError(f"worker port must be 1-65535, got {text!r}")
    return host, int(port)


def check_reachable(endpoint: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise WorkerUnreachable unless a TCP connection to `endpoint` opens within `timeout`."""
    host, port = parse_endpoint(endpoint)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise WorkerUnreachable(endpoint, e.strerror or str(e)) from None


@dataclass(frozen=True)
class RemoteDevice:
    """One device a worker exposes, with free memory read when this was made."""

    endpoint: str
    index: int  # the device's index on its worker
    name: str  # ggml's name in this process, e.g. "RPC0"
    handle: int  # ggml_backend_dev_t
    free: int
    total: int

    @property
    def label(self) -> str:
        return f"rpc:{self.endpoint}#{self.index}"


class _RpcFns:
    """The ggml-rpc entry points, as C function pointers from the RPC registry."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        lib.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
        lib.ggml_backend_reg_by_name.restype = ctypes.c_void_p
        lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
        lib.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
        lib.ggml_backend_dev_by_name.argtypes = [ctypes.c_char_p]
        lib.ggml_backend_dev_by_name.restype = ctypes.c_void_p
        reg = lib.ggml_backend_reg_by_name(b"RPC")
        if not reg:
            raise RpcUnavailable()

        def proc(name: str, restype: Any, *argtypes: Any) -> Any:
            addr = lib.ggml_backend_reg_get_proc_address(reg, name.encode())
            if not addr:
                raise RpcUnavailable()
            return ctypes.CFUNCTYPE(restype, *argtypes)(addr)

        self.add_server = proc("ggml_backend_rpc_add_server", ctypes.c_void_p, ctypes.c_char_p)
        self.start_server = proc("ggml_backend_rpc_start_server", None, ctypes.c_char_p, ctypes.c_char_p,
                                 ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p))


def _rpc() -> _RpcFns:
    global _fns
    with _lock:
        if _fns is None:
            lib = _libggml()
            if lib is None:
                raise RpcUnavailable()
            _fns = _RpcFns(lib)
            lib.ggml_set_abort_callback.argtypes = [_ABORT_CALLBACK]
            lib.ggml_set_abort_callback.restype = ctypes.c_void_p
            lib.ggml_set_abort_callback(_on_abort)
        return _fns


_ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)


@_ABORT_CALLBACK
def _on_abort(message: bytes) -> None:
    """ggml is about to abort(). A lost worker (on one of the RPC client's own threads, which
    hold no lock of ours or llama.cpp's): tell the watchers and never return. Anything else:
    print what ggml would have printed, and let it abort."""
    text = (message or b"").decode(errors="replace")
    if "RPC" in text and isinstance(threading.current_thread(), threading._DummyThread):
        log.error("an RPC worker was lost: %s", text)
        for fn in list(_listeners):  # at once: one whose workers live settles for seconds (lost_worker)
            threading.Thread(target=_tell, args=(fn, text), name="rpc-worker-lost", daemon=True).start()
        threading.Event().wait()
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _tell(fn: Callable[[str], None], text: str) -> None:
    try:
        fn(text)
    except Exception:
        log.exception("RPC worker-loss handler failed")


def watch(fn: Callable[[str], None]) -> Callable[[], None]:
    """Call `fn(message)` when a worker is lost mid-call; returns the function that unwatches."""
    _listeners.append(fn)
    return lambda: _listeners.remove(fn) if fn in _listeners else None


def lost_worker(endpoints: tuple[str, ...] | list[str], settle: float = LOSS_SETTLE_S) -> str | None:
    """The first of `endpoints` that no longer accepts connections, if any.

    Asked right after a connection broke: a killed worker's kernel closes that connection a
    moment before its listening socket, so one that still accepts is asked again until
    `settle` seconds have passed (a check that saw it alive once missed its loss, and the
    model's requests hung). Runs on a thread of its own (one per watching runner, started by
    the abort callback), never on the event loop.
    """
    deadline = time.monotonic() + settle
    while True:
        for ep in endpoints:
            try:
                check_reachable(ep)
            except WorkerUnreachable:
                return ep
        if time.monotonic() >= deadline:
            return None
        threading.Event().wait(LOSS_POLL_S)


def mark_lost(endpoint: str) -> None:
    """The worker at `endpoint` was lost: later loads reach it through a fresh alias."""
    with _lock:
        _generation[endpoint] = _generation.get(endpoint, 0) + 1


def ggml_endpoint(endpoint: str) -> str:
    """The text llama.cpp gets for `endpoint`: itself, or after a loss an alias that parses
    to the same host and port (std::stoi reads "050052" as 50052) but is a new key in
    llama.cpp's per-endpoint caches."""
    host, port = parse_endpoint(endpoint)
    n = _generation.get(endpoint, 0)
    return endpoint if n == 0 else f"{host}:{str(port).zfill(len(str(port)) + n)}"


def supported() -> bool:
    """Whether this llama-cpp-python has the RPC backend (for doctor and the build check)."""
    try:
        _rpc()
    except RpcUnavailable:
        return False
    return True


def remote_devices(endpoints: list[str] | tuple[str, ...], timeout: float = CONNECT_TIMEOUT_S) -> list[RemoteDevice]:
    """Every device of every worker, in the order given, with its free memory read now.

    Raises WorkerUnreachable (naming the first worker that does not answer) before any call
    into llama.cpp, whose own connection failure would abort the process.
    """
    fns = _rpc()
    for ep in endpoints:
        check_reachable(ep, timeout)
    lib = fns.lib
    out: list[RemoteDevice] = []
    for ep in endpoints:
        reg = fns.add_server(ggml_endpoint(ep).encode())
        if not reg:
            raise WorkerUnreachable(ep, "it exposes no devices")
        for i in range(lib.ggml_backend_reg_dev_count(reg)):
            dev = lib.ggml_backend_reg_dev_get(reg, i)
            free, total = device_memory(lib, dev)
            name = (lib.ggml_backend_dev_name(dev) or b"").decode(errors="replace")
            out.append(RemoteDevice(ep, i, name, int(dev), free, total))
    return out


def local_gpu_handles() -> list[tuple[int, int]]:
    """(ggml_backend_dev_t, free bytes) of each local GPU llama.cpp would offload to."""
    lib = _libggml()
    if lib is None:
        return []
    return [(dev, device_memory(lib, dev)[0]) for dev in device_handles(lib)
            if lib.ggml_backend_dev_type(dev) in (DEV_TYPE_GPU, DEV_TYPE_IGPU)]


def serve(endpoint: str, device_names: list[str], threads: int) -> None:
    """Run llama.cpp's RPC server on `endpoint` until the process is killed (blocks in C).

    Devices: the ones named, else every GPU, else the CPU (what llama.cpp's rpc-server does).
    Raises EngineError for an unknown device name, listing the known ones.
    """
    fns = _rpc()
    lib = fns.lib
    handles: list[int] = []
    for name in device_names:
        dev = lib.ggml_backend_dev_by_name(name.encode())
        if not dev:
            known = ", ".join(n for n, _ in worker_devices())
            raise EngineError(f"unknown device {name!r} (this machine has: {known})")
        handles.append(dev)
    if not handles:
        handles = [h for h, _ in local_gpu_handles()] or [_cpu_handle(lib)]
    arr = (ctypes.c_void_p * len(handles))(*handles)
    fns.start_server(endpoint.encode(), None, threads, len(handles), arr)
    raise EngineError(f"the RPC server on {endpoint} stopped (is the port in use?)")


def worker_devices() -> list[tuple[str, str]]:
    """(name, description) of every ggml device on this machine (for --device and errors)."""
    lib = _libggml()
    if lib is None:
        return []
    return [((lib.ggml_backend_dev_name(d) or b"").decode(), (lib.ggml_backend_dev_description(d) or b"").decode())
            for d in device_handles(lib)]


def _cpu_handle(lib: ctypes.CDLL) -> int:
    dev = lib.ggml_backend_dev_by_name(b"CPU")
    if not dev:
        raise EngineError("llama.cpp has no CPU device")
    return int(dev)
