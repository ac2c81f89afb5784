"""Write a random-weight llama GGUF shaped like a real model, quantized as Q4_K_M, for benchmarks.

Speed depends on shapes and quantization types, not values, so it decodes like the real model.
The quantized blocks are written directly (no F16 file, no llama-quantize): random quant bytes
with a small fixed scale per block, in llama-quantize's Q4_K_M mix (Q6_K for the output head
and for attn_v / ffn_down in the layers it gives more bits, Q4_K elsewhere). Blocks are views
into one shared pool of random bytes at random offsets, so an 8B-shaped file (4.9 GB) is
written at disk speed. The tokenizer (and so the vocabulary size, which sets the output head's size) is
copied from a vocab-only GGUF: llama.cpp's models/ggml-vocab-llama-bpe.gguf for Llama 3.

  python scripts/make_bench_model.py OUT.gguf --shape 8b --vocab ggml-vocab-llama-bpe.gguf
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ggufmaker import VOCAB, Shape, _copy_tokenizer  # noqa: E402

SHAPES = {
    "8b": Shape(n_embd=4096, n_layer=32, n_head=32, n_head_kv=8, n_ff=14336, n_ctx_train=8192, name="bench-8b"),
    "1b": Shape(n_embd=2048, n_layer=16, n_head=32, n_head_kv=8, n_ff=8192, n_ctx_train=8192, name="bench-1b"),
    "tiny": Shape(n_embd=256, n_head=4, n_head_kv=2, n_ff=512, name="bench-tiny"),
}


def write(path: Path, shape: Shape, vocab: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(shape.name)
    w.add_context_length(shape.n_ctx_train)
    w.add_embedding_length(shape.n_embd)
    w.add_block_count(shape.n_layer)
    w.add_feed_forward_length(shape.n_ff)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(500000.0)
    w.add_rope_dimension_count(shape.n_embd // shape.n_head)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    n_vocab = len(_copy_tokenizer(w, vocab))
    e, kv = shape.n_embd, shape.n_embd // shape.n_head * shape.n_head_kv
    Q4, Q6 = gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K
    largest = n_vocab * e // 256 * 210
    pool = rng.integers(0, 256, size=largest + (1 << 20), dtype=np.uint8)

    def blocks(qtype: gguf.GGMLQuantizationType, rows: int, cols: int) -> np.ndarray:
        """rows x (cols/256) blocks of random quants with fixed scales (zero-mean weights)."""
        size = gguf.GGML_QUANT_SIZES[qtype][1]
        n = rows * cols // 256
        off = int(rng.integers(0, len(pool) - n * size + 1))
        b = pool[off:off + n * size].reshape(n, size).copy()
        f16 = lambda x: np.frombuffer(np.float16(x).tobytes(), dtype=np.uint8)  # noqa: E731
        if qtype == Q4:
            # d, dmin, then 12 bytes of packed 6-bit scales/mins: all 0x11 makes each
            # sub-block's min equal its scale (17 or 1), and dmin = 7.5 d centres the 4-bit
            # quants: w = scale * d * (q - 7.5). Zero-mean weights keep activations small;
            # uncentred ones grow past f16's range on the GPU and every logit turns NaN.
            b[:, 0:2] = f16(0.002)
            b[:, 2:4] = f16(0.015)
            b[:, 4:16] = 0x11
        else:  # Q6_K: w = d * scale * (q - 32), already centred; d last
            b[:, -2:] = f16(0.0001)
        return b.reshape(rows, cols // 256 * size)

    def more_bits(i: int) -> bool:
        """llama-quantize's Q4_K_M rule for attn_v and ffn_down."""
        n = shape.n_layer
        return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2

    def t(name: str, *dims: int, qtype: gguf.GGMLQuantizationType = Q4) -> None:
        if len(dims) == 1:
            w.add_tensor(name, np.ones(dims, dtype=np.float32))  # norms stay F32, as in real GGUFs
            return
        rows, cols = dims
        w.add_tensor(name, blocks(qtype, rows, cols), raw_dtype=qtype)

    t("token_embd.weight", n_vocab, e)
    t("output_norm.weight", e)
    t("output.weight", n_vocab, e, qtype=Q6)
    for i in range(shape.n_layer):
        t(f"blk.{i}.attn_norm.weight", e)
        t(f"blk.{i}.attn_q.weight", e, e)
        t(f"blk.{i}.attn_k.weight", kv, e)
        t(f"blk.{i}.attn_v.weight", kv, e, qtype=Q6 if more_bits(i) else Q4)
        t(f"blk.{i}.attn_output.weight", e, e)
        t(f"blk.{i}.ffn_norm.weight", e)
        t(f"blk.{i}.ffn_gate.weight", shape.n_ff, e)
        t(f"blk.{i}.ffn_down.weight", e, shape.n_ff, qtype=Q6 if more_bits(i) else Q4)
        t(f"blk.{i}.ffn_up.weight", shape.n_ff, e)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    p.add_argument("--vocab", type=Path, default=VOCAB, help="vocab-only GGUF whose tokenizer is copied")
    a = p.parse_args()
    print(write(a.out, SHAPES[a.shape], a.vocab))
