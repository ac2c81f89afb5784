"""GGUF header reading on real files: a tiny llama, a real split GGUF, and Gemma 3 270M."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from appliance.store import read_gguf_info
from ggufmaker import Shape, make_gguf


def test_tiny_llama(tmp_path: Path) -> None:
    shape = Shape(n_embd=64, n_layer=3, n_head=4, n_head_kv=2, n_ff=128, n_ctx_train=2048, chat_template="{{x}}")
    path = make_gguf(tmp_path / "t.gguf", shape)
    info = read_gguf_info(path)
    assert (info.architecture, info.layers, info.embedding, info.heads, info.kv_heads) == ("llama", 3, 64, 4, 2)
    assert info.context_train == 2048 and info.quantization == "F32" and info.has_chat_template
    assert info.vocab_size == 32000 and info.sliding_window is None
    per_layer = 4 * (2 * 64 + 64 * 64 * 2 + 32 * 64 * 2 + 128 * 64 * 3)
    assert info.layer_bytes == (per_layer,) * 3
    output = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(path).tensors}.get("output.weight", 0)
    assert info.token_embd_bytes == 4 * 32000 * 64 and info.output_bytes == output
    assert info.tensor_bytes == info.non_layer_bytes + 3 * per_layer
    assert info.parameters * 4 == info.tensor_bytes
    assert info.head_dim_k == 16 and info.kv_heads_per_layer == (2, 2, 2)
    # what the memory estimator reads: FFN width, K/V elements per cell, the rest (output_norm)
    assert info.feed_forward == 128 and info.n_embd_k_gqa(0) == info.n_embd_v_gqa(2) == 32
    assert info.other_bytes == 4 * 64 and info.output_tied == (output == 0)


def _write(path: Path, tensors: dict[str, np.ndarray], **keys: object) -> Path:
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(int(keys.get("layers", 1)))  # type: ignore[call-overload]
    w.add_embedding_length(8)
    w.add_head_count(2)
    if "ff" in keys:
        w.add_feed_forward_length(keys["ff"])  # type: ignore[arg-type]
    if "kv" in keys:
        w.add_head_count_kv(keys["kv"])  # type: ignore[arg-type]
    if "key_length" in keys:
        w.add_key_length(keys["key_length"])  # type: ignore[arg-type]
        w.add_value_length(keys["key_length"])  # type: ignore[arg-type]
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_tied_output_per_layer_heads_and_extra_blocks(tmp_path: Path) -> None:
    """No output.weight (tied); per-layer FFN widths and KV heads; a block past block_count
    (an MTP-style head) counts with the tensors outside the repeating layers."""
    one = np.ones((8, 8), dtype=np.float32)
    path = _write(
        tmp_path / "t.gguf",
        {"token_embd.weight": one, "output_norm.weight": np.ones(8, dtype=np.float32),
         "blk.0.attn_q.weight": one, "blk.1.attn_q.weight": one, "blk.2.attn_q.weight": one},
        layers=2, ff=[16, 24], kv=[1, 2], key_length=6,
    )
    info = read_gguf_info(path)
    assert info.output_tied and info.output_bytes == 0 and info.token_embd_bytes == 256
    assert info.layers == 2 and info.layer_bytes == (256, 256, 256)
    assert info.other_bytes == 32 + 256  # output_norm + blk.2
    assert info.feed_forward == 24 and info.kv_heads_per_layer == (1, 2)
    assert info.head_dim_k == info.head_dim_v == 6
    assert (info.n_embd_k_gqa(0), info.n_embd_k_gqa(1)) == (6, 12)


def test_split_gguf_sums_shards(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(tmp_path / "s.gguf", "llama", split_max_tensors=2)
    w.add_block_count(2)
    w.add_embedding_length(8)
    w.add_head_count(2)
    w.add_head_count_kv([1, 2])  # per-layer array
    w.add_context_length(128)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.1.attn_q.weight", "output.weight", "blk.1.ffn_up.weight"):
        w.add_tensor(name, np.ones((8, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    shards = sorted(tmp_path.glob("s-*-of-*.gguf"))
    assert len(shards) == 3
    info = read_gguf_info(shards)
    assert info.shards == 3 and info.tensor_bytes == 5 * 256 and info.parameters == 5 * 64
    assert info.layer_bytes == (256, 512) and info.output_bytes == 256 and info.token_embd_bytes == 256
    assert info.kv_heads == (1, 2) and info.kv_heads_per_layer == (1, 2)


@pytest.mark.gemma
def test_gemma(gemma_path: Path) -> None:
    info = read_gguf_info(gemma_path)
    assert info.architecture == "gemma3" and info.quantization == "Q4_K_M"
    assert info.layers == 18 and info.sliding_window == 512
    assert 260_000_000 < info.parameters < 280_000_000
    assert info.vocab_size == 262144 and info.key_length == 256
    assert not info.has_chat_template
