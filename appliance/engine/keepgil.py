"""llama.cpp functions bound so that a call keeps the GIL.

llama_cpp's bindings (ctypes.CDLL) release the GIL for every call and take it back on
return. For a call that returns in microseconds that is all cost: taking the GIL back from a
busy event loop can wait up to a switch interval. On an H200 at 16 streams, the decode
thread spent 9 % of its time retaking the GIL after the per-stream sampled-token reads
alone (docs/benchmarks.md). Bind here only calls that never block: nothing that waits for
the GPU, the network (RPC) or does real compute.
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp

_lib = ctypes.PyDLL(llama_cpp.llama_cpp._lib._name)


def bind(name: str, argtypes: list[Any], restype: Any) -> Any:
    """`name` from libllama, called without releasing the GIL."""
    fn = getattr(_lib, name)
    fn.argtypes = argtypes
    fn.restype = restype
    return fn
