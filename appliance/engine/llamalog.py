"""llama.cpp's log, routed into `logging` and captured per load.

llama.cpp prints a lot at load time; we keep it quiet (DEBUG on the `appliance.llama`
logger) but still want the buffer sizes it reports (weights, KV cache, compute buffers per
device), because they are the ground truth the scheduler's memory estimate is compared to.
`capture()` collects the lines logged by the current thread while a model loads.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import llama_cpp

log = logging.getLogger("appliance.llama")

# ggml_log_level: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5 (continuation)
_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_local = threading.local()
_installed = False
_install_lock = threading.Lock()

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
    global _installed
    with _install_lock:
        if not _installed:
            llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
            # libmtmd (images) logs through its own hooks, at INFO per request (prompt text
            # included): the same route, so it is DEBUG here and never on stderr
            from llama_cpp import mtmd_cpp

            mtmd_cpp.mtmd_log_set(_callback, ctypes.c_void_p(0))
            mtmd_cpp.mtmd_helper_log_set(_callback, ctypes.c_void_p(0))
            _installed = True


@contextmanager
def capture() -> Iterator[list[str]]:
    """Collect the log text llama.cpp emits on this thread inside the block."""
    install()
    prev = getattr(_local, "lines", None)
    lines: list[str] = []
    _local.lines = lines
    try:
        yield lines
    finally:
        _local.lines = prev
        if prev is not None:
            prev.extend(lines)


def join_lines(chunks: list[str]) -> list[str]:
    """llama.cpp logs in pieces (progress dots, continuations): rejoin into lines."""
    return "".join(chunks).splitlines()
