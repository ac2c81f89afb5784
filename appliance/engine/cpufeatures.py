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


def match_in_llama_cpp_python() -> None:
    """Make llama-cpp-python's own `Llama` (and so its server) load models with the same
    buffer types as our runner, so side-by-side figures compare like with like."""
    if extra_buffers_safe():
        return
    import llama_cpp.llama_cpp as llcpp

    default_params = llcpp.llama_model_default_params
    if getattr(default_params, "_appliance_patched", False):
        return

    def params():  # type: ignore[no-untyped-def]
        p = default_params()
        p.use_extra_bufts = False
        return p

    params._appliance_patched = True  # type: ignore[attr-defined]
    llcpp.llama_model_default_params = params
