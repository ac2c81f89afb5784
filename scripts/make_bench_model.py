"""Write a Llama-3.2-1B-shaped random-weight GGUF (F32) for GPU benchmarks.

Speed depends on shapes, not values: quantized with llama-quantize to Q4_K_M it decodes like
the real model. Usage: python scripts/make_bench_model.py OUT.gguf
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ggufmaker import Shape, make_gguf  # noqa: E402

SHAPE = Shape(n_embd=2048, n_layer=16, n_head=32, n_head_kv=8, n_ff=8192, n_ctx_train=8192, name="bench-1b")

if __name__ == "__main__":
    print(make_gguf(Path(sys.argv[1]), SHAPE))
