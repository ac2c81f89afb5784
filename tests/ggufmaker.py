"""Synthetic llama-architecture GGUFs with random weights, for tests.

Speed and memory depend on shapes, not values, so a random-weight model exercises the
same llama.cpp paths as a real one. The tokenizer is copied from the small vocab-only
GGUF in tests/data (llama.cpp's ggml-vocab-llama-spm.gguf, 32000 tokens).

The output head is untied, with its own random values: with a tied head, the residual
stream (dominated by the scale-1 input embedding, the layers being scale 0.02) scores
highest against that same embedding, so every seed just repeated its last token and
different seeds gave identical greedy outputs. An untied head maps the last token to a
seed-dependent next token, so models of different seeds continue a prompt differently.
Its rows for control, unknown and byte tokens are zero: greedy decoding emits only normal
text tokens (never EOS by chance, never half a UTF-8 character) unless a grammar or logit
bias asks for them.

Writing one takes seconds (the vocab is parsed, 32000 rows drawn), so each is built once per
content hash (this file, the vocab, shape, seed, library versions) into a cache directory
($APPLIANCE_TEST_CACHE, default ~/.cache/appliance-tests) and copied to where a test wants
it. Two pytest processes may build the same one at once: each writes a temp name and renames.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import gguf
import numpy as np

DATA = Path(__file__).parent / "data"
VOCAB = DATA / "ggml-vocab-llama-spm.gguf"
# Read at import, before the tests' isolated_env points HOME elsewhere.
CACHE = Path(os.environ.get("APPLIANCE_TEST_CACHE") or Path.home() / ".cache" / "appliance-tests") / "ggufs"


@dataclass(frozen=True)
class Shape:
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_ctx_train: int = 4096
    chat_template: str | None = None
    name: str = "tiny"
    fim: bool = False  # the vocabulary's last three tokens become FIM_TOKENS (control, keyed as FIM ids)
    arch: str = "llama"  # or "qwen2vl": the decoder rotates with M-RoPE over `rope_sections`
    rope_sections: tuple[int, ...] = (2, 3, 3, 0)  # (temporal, height, width, -): qwen2vl only, sums to head_dim/2
    qk_scale: float = 0.02  # of the random q/k weights; larger makes attention sharp, so positions matter


# Qwen2.5-Coder's spelling; llama.cpp finds them through the tokenizer.ggml.fim_*_token_id keys.
FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")


def _copy_tokenizer(w: gguf.GGUFWriter, vocab: Path, fim: bool = False) -> np.ndarray:
    """Copy the tokenizer keys (with FIM tokens over the last three when `fim`); return each
    token's type (its length is the vocab size)."""
    r = gguf.GGUFReader(vocab)
    n = len(r.fields["tokenizer.ggml.tokens"].contents())
    fim_ids = list(range(n - len(FIM_TOKENS), n)) if fim else []
    types: list[int] = []
    for key, f in r.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = f.types[0]
        value = f.contents()
        if key == "tokenizer.ggml.tokens":
            for i, text in zip(fim_ids, FIM_TOKENS):
                value[i] = text
        elif key == "tokenizer.ggml.token_type":
            for i in fim_ids:
                value[i] = int(gguf.TokenType.CONTROL)
            types = list(value)
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, value, vtype, sub_type=f.types[1])
        else:
            w.add_key_value(key, value, vtype)
    for key, i in zip((gguf.Keys.Tokenizer.FIM_PRE_ID, gguf.Keys.Tokenizer.FIM_SUF_ID, gguf.Keys.Tokenizer.FIM_MID_ID),
                      fim_ids):
        w.add_uint32(key, i)
    return np.asarray(types)


def make_gguf(path: Path, shape: Shape = Shape(), seed: int = 0) -> Path:
    """A random-weight llama GGUF of `shape` at `path` (F32 weights, untied output): a copy of
    the cached build, so a test may change or delete its file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached_gguf(shape, seed), path)
    return path


def cache_key(shape: Shape, seed: int) -> str:
    """Everything the file's bytes depend on."""
    h = hashlib.sha256()
    for part in (Path(__file__).read_bytes(), VOCAB.read_bytes(), repr(sorted(asdict(shape).items())).encode(),
                 str(seed).encode(), version("gguf").encode(), np.__version__.encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def cached_gguf(shape: Shape, seed: int = 0) -> Path:
    """The cached build for these inputs, written if missing."""
    return cached_file(f"{shape.name}-{cache_key(shape, seed)[:24]}.gguf", lambda tmp: _write_gguf(tmp, shape, seed))


def cached_file(name: str, write: Callable[[Path], None]) -> Path:
    """CACHE/name, built by `write` (to a temp name, then renamed: concurrent test runs
    never see a half-written file) unless it is there already. The name carries the inputs' hash."""
    out = CACHE / name
    if out.is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        write(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _write_gguf(path: Path, shape: Shape, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), shape.arch)
    w.add_name(shape.name)
    if shape.arch == "qwen2vl":
        w.add_rope_dimension_sections(list(shape.rope_sections))
    w.add_context_length(shape.n_ctx_train)
    w.add_embedding_length(shape.n_embd)
    w.add_block_count(shape.n_layer)
    w.add_feed_forward_length(shape.n_ff)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(shape.n_embd // shape.n_head)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    token_type = _copy_tokenizer(w, VOCAB, shape.fim)
    n_vocab = len(token_type)
    if shape.chat_template:
        w.add_chat_template(shape.chat_template)

    def t(name: str, *dims: int, scale: float = 0.02) -> None:
        if len(dims) == 1:
            arr = np.ones(dims, dtype=np.float32)
        else:
            arr = (rng.standard_normal(dims) * scale).astype(np.float32)
        w.add_tensor(name, arr)

    e, kv = shape.n_embd, shape.n_embd // shape.n_head * shape.n_head_kv
    t("token_embd.weight", n_vocab, e, scale=1.0)
    t("output_norm.weight", e)
    head = rng.standard_normal((n_vocab, e)).astype(np.float32)
    head[token_type != gguf.TokenType.NORMAL] = 0.0
    w.add_tensor("output.weight", head)
    for i in range(shape.n_layer):
        t(f"blk.{i}.attn_norm.weight", e)
        t(f"blk.{i}.attn_q.weight", e, e, scale=shape.qk_scale)
        t(f"blk.{i}.attn_k.weight", kv, e, scale=shape.qk_scale)
        t(f"blk.{i}.attn_v.weight", kv, e)
        t(f"blk.{i}.attn_output.weight", e, e)
        t(f"blk.{i}.ffn_norm.weight", e)
        t(f"blk.{i}.ffn_gate.weight", shape.n_ff, e)
        t(f"blk.{i}.ffn_down.weight", e, shape.n_ff)
        t(f"blk.{i}.ffn_up.weight", shape.n_ff, e)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def make_big_vocab_gguf(path: Path, n_vocab: int = 262144, seed: int = 0) -> Path:
    """A one-layer llama GGUF with Gemma 3's vocabulary size (262k tokens) and tiny tensors:
    its header is what is slow to parse (three 262k-element tokenizer arrays), not its
    weights. The spm vocabulary's tokens come first, then unique filler tokens."""
    rng = np.random.default_rng(seed)
    r = gguf.GGUFReader(VOCAB)
    base_tokens = [bytes(x).decode() if not isinstance(x, str) else x for x in r.fields["tokenizer.ggml.tokens"].contents()]
    base_scores = list(r.fields["tokenizer.ggml.scores"].contents())
    base_types = list(r.fields["tokenizer.ggml.token_type"].contents())
    extra = n_vocab - len(base_tokens)
    tokens = base_tokens + [f"\u2581w{i}" for i in range(extra)]
    scores = [float(x) for x in base_scores] + [-1e4 - i for i in range(extra)]
    types = [int(x) for x in base_types] + [int(gguf.TokenType.NORMAL)] * extra
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    e, n_head, n_ff = 16, 2, 32
    w.add_name(path.stem)
    w.add_context_length(4096)
    w.add_embedding_length(e)
    w.add_block_count(1)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(e // n_head)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id"):
        w.add_uint32(key, int(r.fields[key].contents()))
    kv = e // n_head

    def t(name: str, *dims: int) -> None:
        arr = np.ones(dims, dtype=np.float32) if len(dims) == 1 else (rng.standard_normal(dims) * 0.02).astype(np.float32)
        w.add_tensor(name, arr)

    t("token_embd.weight", n_vocab, e)  # tied: no output.weight
    t("output_norm.weight", e)
    t("blk.0.attn_norm.weight", e)
    t("blk.0.attn_q.weight", e, e)
    t("blk.0.attn_k.weight", kv, e)
    t("blk.0.attn_v.weight", kv, e)
    t("blk.0.attn_output.weight", e, e)
    t("blk.0.ffn_norm.weight", e)
    t("blk.0.ffn_gate.weight", n_ff, e)
    t("blk.0.ffn_down.weight", e, n_ff)
    t("blk.0.ffn_up.weight", n_ff, e)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
