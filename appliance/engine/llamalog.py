"""llama.cpp's log, routed into `logging` and captured per load.

llama.cpp prints a lot at load time; we keep it quiet (DEBUG on the `appliance.llama`
logger) but still want the buffer sizes it reports (weights, KV cache, compute buffers per
device), because they are the ground truth the scheduler's memory estimate is compared to.
`capture()` collects the lines logged by the current thread while a model loads.

Once a model is loaded, its decode thread wraps each step in `quiet()`: llama.cpp's callback
is then a C function that returns at once, so per-step lines (ggml-cuda's "CUDA Graph id …
reused", llama_sampler_sample's "Backend sampler selected token", a re-planned graph's
reserve lines) never take the GIL from the event loop. llama.cpp 0.3.36 has no level filter
(`ggml_log_set` / `llama_log_set` take one process-wide callback, every level goes to it), so
inside a step *every* line is dropped, warnings and errors included, from any thread. What
that loses: decode-time warnings the runner sees anyway (llama_decode's return code, which it
logs itself; a sampler llama.cpp will not put in the graph, which `llama_set_sampler`
reports) and the detail lines ggml writes before an abort (the abort message itself goes to
stderr directly). Outside steps (an idle runner) and during any load, every line reaches
`logging` as before: a load's `capture()` turns the Python callback back on for its whole
duration, even while another model's steps run.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import llama_cpp

from .keepgil import bind

log = logging.getLogger("appliance.llama")

# ggml_log_level: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5 (continuation)
_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_local = threading.local()
_installed = False
_install_lock = threading.Lock()
_quiet: set[int] = set()  # threads inside quiet() (idents)
_loud = 0  # captures running (a load must see its lines)
_active: object = None  # the callback llama.cpp holds now

# "load_tensors:   CPU_Mapped model buffer size =   248.20 MiB"
# "llama_kv_cache:        CPU KV buffer size =    72.00 MiB"
# "llama_context:        CPU compute buffer size =    19.80 MiB"
# "llama_context:  CPU  output buffer size =     1.00 MiB"
_BUFFER_RE = re.compile(
    r"^\s*(?P<fn>\w+):\s+(?P<dev>\S+)\s+(?P<kind>model|KV|RS|compute|output|LoRA)\s+buffer size\s*=\s*(?P<mib>[\d.]+) MiB"
)


@dataclass
class BufferSizes:
    """Bytes per buffer kind ('model', 'KV', 'compute', 'output', 'RS') and device name."""

    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, kind: str, device: str, nbytes: int) -> None:
        per_dev = self.by_kind.setdefault(kind, {})
        per_dev[device] = per_dev.get(device, 0) + nbytes

    def total(self, *kinds: str) -> int:
        """Sum over devices of the given kinds (all kinds when none given)."""
        return sum(
            sum(devs.values()) for k, devs in self.by_kind.items() if not kinds or k in kinds
        )


def parse_buffer_sizes(lines: list[str]) -> BufferSizes:
    sizes = BufferSizes()
    for line in lines:
        m = _BUFFER_RE.match(line)
        if m:
            sizes.add(m["kind"], m["dev"], round(float(m["mib"]) * 1024 * 1024))
    return sizes


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]  # a ctypes CFUNCTYPE
def _callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    try:
        s = text.decode("utf-8", errors="replace")
    except Exception:  # never let an exception cross into C
        return
    lines = getattr(_local, "lines", None)
    if lines is not None:
        lines.append(s)
    if level == 5:  # continuation of the previous message
        level = getattr(_local, "last_level", 1)
    _local.last_level = level
    py_level = _LEVELS.get(level, logging.DEBUG)
    # llama.cpp's own INFO chatter is our DEBUG; warnings and errors stay what they are.
    if py_level <= logging.INFO:
        py_level = logging.DEBUG
    if log.isEnabledFor(py_level):
        log.log(py_level, "%s", s.rstrip("\n"))


def install() -> None:
    """Route llama.cpp's (and ggml's, and libmtmd's) log into `logging`; idempotent.

    The ctypes callback object is module-global so it is never garbage collected while
    C still holds its pointer.
    """
    global _installed, _active
    with _install_lock:
        if not _installed:
            llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
            _active = _callback
            # libmtmd (images) logs through its own hooks, at INFO per request (prompt text
            # included): the same route, so it is DEBUG here and never on stderr
            from llama_cpp import mtmd_cpp

            mtmd_cpp.mtmd_log_set(_callback, ctypes.c_void_p(0))
            mtmd_cpp.mtmd_helper_log_set(_callback, ctypes.c_void_p(0))
            _installed = True
            _apply()  # another thread may be inside quiet() already


def _c_noop() -> object:
    """libc's `abs` as a log callback: a C function that ignores the text and returns.

    ABI-safe where it runs (x86-64 System V, AArch64 AAPCS64; Linux and macOS): arguments
    travel in registers and the caller cleans up, so a callee that reads only the first
    (int) argument is fine, and the int it leaves in the return register is ignored by a
    caller expecting void. No syscall, no side effect, no GIL."""
    addr = ctypes.cast(ctypes.CDLL(None).abs, ctypes.c_void_p).value
    assert addr is not None
    return llama_cpp.llama_log_callback(addr)


_NOOP = _c_noop()  # module-global: the ctypes object must outlive every use of its pointer
# llama_log_set keeping the GIL (keepgil): two calls a step must not each wait for the GIL
# on a busy event loop, or they would give back what quiet() saves
_set_callback: Callable[[object, None], None] = bind("llama_log_set", [llama_cpp.llama_log_callback, ctypes.c_void_p], None)


def _apply() -> None:
    """Give llama.cpp the callback the current state calls for (under _install_lock)."""
    global _active
    want = _NOOP if _quiet and not _loud else _callback
    if _installed and want is not _active:
        _set_callback(want, None)
        _active = want


@contextmanager
def quiet() -> Iterator[None]:
    """Inside the block, llama.cpp's lines do not enter Python (unless a load is capturing)."""
    me = threading.get_ident()
    with _install_lock:
        _quiet.add(me)
        _apply()
    try:
        yield
    finally:
        release(me)


def release(thread_ident: int) -> None:
    """That thread is no longer quiet: also for a decode thread abandoned inside a call that
    never returns (a lost RPC worker), so the rest of the process logs again."""
    with _install_lock:
        _quiet.discard(thread_ident)
        _apply()


@contextmanager
def capture() -> Iterator[list[str]]:
    """Collect the log text llama.cpp emits on this thread inside the block (also while
    other threads are inside quiet())."""
    global _loud
    install()
    with _install_lock:
        _loud += 1
        _apply()
    prev = getattr(_local, "lines", None)
    lines: list[str] = []
    _local.lines = lines
    try:
        yield lines
    finally:
        _local.lines = prev
        if prev is not None:
            prev.extend(lines)
        with _install_lock:
            _loud -= 1
            _apply()


def join_lines(chunks: list[str]) -> list[str]:
    """llama.cpp logs in pieces (progress dots, continuations): rejoin into lines."""
    return "".join(chunks).splitlines()
