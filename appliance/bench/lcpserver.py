"""llama-cpp-python's server (`python -m llama_cpp.server`) as a peer, loading models with the
buffer types our runner uses (engine/cpufeatures: extra buffer types off on AMX CPUs, where
they crash llama.cpp 0.3.36), so the comparison is like with like. Arguments pass through."""

from __future__ import annotations

import runpy
import sys

from ..engine.cpufeatures import match_in_llama_cpp_python

if __name__ == "__main__":
    match_in_llama_cpp_python()
    sys.argv = ["llama_cpp.server", *sys.argv[1:]]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
