"""CPU features that change how llama.cpp may be used here.

The wheel is built for the host CPU (-march=native), so on a CPU with AMX ggml places
quantized weights in its AMX buffer type. With llama-cpp-python 0.3.36 that path crashed
the process on the first `llama_decode` on this machine (Gemma 3 270M Q4_K_M, segfault,
both our runner and llama-cpp-python's `Llama`); with extra buffer types off it runs. So
by default the runner turns extra buffer types off where the CPU advertises AMX.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_amx() -> bool:
    return any(f.startswith("amx") for f in cpu_flags())


def extra_buffers_safe() -> bool:
    """Whether to let llama.cpp use its extra CPU buffer types (weight repacking, AMX)."""
    return not has_amx()
