"""GGUF header facts the CLI shows and the memory estimator needs, read with the `gguf` package.

The one header reader of the project: `appliance ls`, `doctor` and the scheduler's estimator
(scheduler/estimate.py) all read a model through `read_gguf_info`, so what the CLI shows and
what the scheduler plans with cannot disagree. The header is parsed by ggufmeta.py, which
skips the token arrays (milliseconds for a 262k-token vocabulary, where `gguf.GGUFReader` took
seconds); no weights are read. Split models (`-0000i-of-0000N.gguf`): metadata from the first
shard, tensors summed over all of them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import gguf

from .ggufmeta import ArrayLen, GGUFMeta, read_meta

_LAYER_RE = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str
    name: str | None
    parameters: int  # sum of tensor element counts
    quantization: str | None  # general.file_type as a name, e.g. "Q4_K_M"
    layers: int
    embedding: int
    feed_forward: int  # FFN width; the largest layer's when it varies per layer
    heads: int | tuple[int, ...]
    kv_heads: int | tuple[int, ...]  # per layer when the file stores an array
    key_length: int | None  # head dim of K (None: embedding / heads)
    value_length: int | None
    context_train: int
    sliding_window: int | None
    sliding_window_pattern: int | tuple[bool, ...] | None
    has_chat_template: bool
    vocab_size: int
    tensor_bytes: int  # all tensors
    layer_bytes: tuple[int, ...]  # tensors under blk.N., by N
    non_layer_bytes: int
    output_bytes: int  # output.weight (0 when tied to token_embd)
    token_embd_bytes: int
    shards: int
    file_bytes: int

    @property
    def output_tied(self) -> bool:
        """No output.weight: llama.cpp reuses token_embd as the output projection."""
        return self.output_bytes == 0

    @property
    def other_bytes(self) -> int:
        """Tensors outside the repeating layers, token embeddings and output projection
        (output norm, rope factors, extra blocks past `layers` such as MTP heads)."""
        extra = sum(self.layer_bytes[self.layers :])
        return self.non_layer_bytes + extra - self.output_bytes - self.token_embd_bytes

    @property
    def kv_heads_per_layer(self) -> tuple[int, ...]:
        kv = self.kv_heads
        return kv if isinstance(kv, tuple) else (kv,) * self.layers

    @property
    def head_dim_k(self) -> int:
        heads = self.heads if isinstance(self.heads, int) else max(self.heads)
        return self.key_length or self.embedding // max(heads, 1)

    @property
    def head_dim_v(self) -> int:
        heads = self.heads if isinstance(self.heads, int) else max(self.heads)
        return self.value_length or self.embedding // max(heads, 1)

    def n_embd_k_gqa(self, layer: int) -> int:
        """K elements per KV cell of `layer` (llama.cpp's n_embd_k_gqa)."""
        return self.head_dim_k * self.kv_heads_per_layer[layer]

    def n_embd_v_gqa(self, layer: int) -> int:
        return self.head_dim_v * self.kv_heads_per_layer[layer]


def _value(meta: GGUFMeta, key: str) -> Any:
    v = meta.get(key)
    return None if isinstance(v, ArrayLen) else v


def _int_or_tuple(v: Any) -> int | tuple[int, ...]:
    if isinstance(v, tuple):
        vals = tuple(int(x) for x in v)
        return vals[0] if len(set(vals)) == 1 else vals
    return int(v or 0)


def _int_or_none(v: Any) -> int | None:
    return None if v is None else int(v)


def quant_name(file_type: Any) -> str | None:
    """general.file_type as llama.cpp and Ollama name it: 15 -> "Q4_K_M", 0 -> "F32"."""
    if file_type is None:
        return None
    try:
        return gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return f"type {file_type}"


def read_gguf_info(path_or_paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> GGUFInfo:
    """Header facts of a GGUF, or of a split GGUF given as its shard paths in order."""
    paths = [Path(path_or_paths)] if isinstance(path_or_paths, (str, os.PathLike)) else [Path(p) for p in path_or_paths]
    first = read_meta(paths[0])
    arch = str(_value(first, "general.architecture") or "unknown")

    def k(key: str) -> Any:
        return _value(first, key.format(arch=arch))

    tensor_bytes = params = output = embd = 0
    layer: dict[int, int] = {}
    for p in paths:
        reader = first if p == paths[0] else read_meta(p)
        for t in reader.tensors:
            n = int(t.n_bytes)
            tensor_bytes += n
            params += int(t.n_elements)
            m = _LAYER_RE.match(t.name)
            if m:
                layer[int(m.group(1))] = layer.get(int(m.group(1)), 0) + n
            elif t.name == "output.weight":
                output += n
            elif t.name == "token_embd.weight":
                embd += n
    n_layer = int(k(gguf.Keys.LLM.BLOCK_COUNT) or 0)
    layer_bytes = tuple(layer.get(i, 0) for i in range(max(n_layer, max(layer, default=-1) + 1)))
    vocab = int(k(gguf.Keys.LLM.VOCAB_SIZE) or first.array_len("tokenizer.ggml.tokens") or 0)
    pattern = k(gguf.Keys.Attention.SLIDING_WINDOW_PATTERN)
    if isinstance(pattern, tuple):
        pattern = tuple(bool(x) for x in pattern)
    elif pattern is not None:
        pattern = int(pattern)
    heads = _int_or_tuple(k(gguf.Keys.Attention.HEAD_COUNT))
    embedding = int(k(gguf.Keys.LLM.EMBEDDING_LENGTH) or 0)
    ff = _int_or_tuple(k(gguf.Keys.LLM.FEED_FORWARD_LENGTH) or 4 * embedding)
    kv = k(gguf.Keys.Attention.HEAD_COUNT_KV)
    return GGUFInfo(
        architecture=arch,
        name=k("general.name"),
        parameters=params,
        quantization=quant_name(k("general.file_type")),
        layers=n_layer,
        embedding=embedding,
        feed_forward=ff if isinstance(ff, int) else max(ff),
        heads=heads,
        kv_heads=heads if kv is None else _int_or_tuple(kv),
        key_length=_int_or_none(k(gguf.Keys.Attention.KEY_LENGTH)),
        value_length=_int_or_none(k(gguf.Keys.Attention.VALUE_LENGTH)),
        context_train=int(k(gguf.Keys.LLM.CONTEXT_LENGTH) or 0),
        sliding_window=_int_or_none(k(gguf.Keys.Attention.SLIDING_WINDOW)),
        sliding_window_pattern=pattern,
        has_chat_template="tokenizer.chat_template" in first.fields,
        vocab_size=vocab,
        tensor_bytes=tensor_bytes,
        layer_bytes=layer_bytes,
        non_layer_bytes=tensor_bytes - sum(layer_bytes),
        output_bytes=output,
        token_embd_bytes=embd,
        shards=len(paths),
        file_bytes=sum(p.stat().st_size for p in paths),
    )
