"""The few numbers of a GGUF's header that decide its memory need.

Read with the `gguf` package (metadata and tensor table only; tensor data is memory-mapped,
never read). Split GGUFs: metadata from the first shard, tensors from all of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import gguf

_BLK = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class ModelShape:
    arch: str
    n_layer: int
    n_embd: int
    n_ff: int  # the largest layer's, when it varies per layer
    n_head: int
    n_head_kv: tuple[int, ...]  # per layer (GGUF may store one value or an array)
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    sliding_window: int  # 0 when the model has none
    layer_bytes: tuple[int, ...]  # weight bytes of each repeating layer
    output_bytes: int  # the output projection (token_embd when the output is tied)
    output_tied: bool
    embd_bytes: int  # token embeddings: always in RAM (llama.cpp keeps the input layer on CPU)
    other_bytes: int  # everything else outside the layers (output norm, rope factors...)

    @property
    def weight_bytes(self) -> int:
        """All tensor bytes as stored in the file(s)."""
        return sum(self.layer_bytes) + self.embd_bytes + self.other_bytes + (0 if self.output_tied else self.output_bytes)

    def n_embd_k_gqa(self, layer: int) -> int:
        return self.head_dim_k * self.n_head_kv[layer]

    def n_embd_v_gqa(self, layer: int) -> int:
        return self.head_dim_v * self.n_head_kv[layer]


def _scalar(fields: dict[str, Any], key: str, default: Any = None) -> Any:
    f = fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v


def read_shape(paths: Sequence[Path | str]) -> ModelShape:
    return _read_shape(tuple(str(p) for p in paths))


@lru_cache(maxsize=64)
def _read_shape(paths: tuple[str, ...]) -> ModelShape:
    first = gguf.GGUFReader(paths[0])
    fields = first.fields
    arch = str(_scalar(fields, "general.architecture"))

    def key(name: str, default: Any = None) -> Any:
        return _scalar(fields, f"{arch}.{name}", default)

    n_layer = int(key("block_count"))
    n_embd = int(key("embedding_length"))
    ff = key("feed_forward_length", 4 * n_embd)
    n_ff = int(max(ff) if isinstance(ff, list) else ff)
    n_head_raw = key("attention.head_count", 1)
    n_head = int(max(n_head_raw) if isinstance(n_head_raw, list) else n_head_raw)
    kv_raw = key("attention.head_count_kv", n_head)
    n_head_kv = tuple(int(x) for x in kv_raw) if isinstance(kv_raw, list) else (int(kv_raw),) * n_layer
    head_k = int(key("attention.key_length", n_embd // max(n_head, 1)))
    head_v = int(key("attention.value_length", head_k))
    tokens = _scalar(fields, "tokenizer.ggml.tokens")
    n_vocab = int(key("vocab_size", len(tokens) if tokens is not None else 0))
    swa = int(key("attention.sliding_window", 0) or 0)

    layer = [0] * n_layer
    output = embd = other = 0
    readers = [first] + [gguf.GGUFReader(p) for p in paths[1:]]
    for r in readers:
        for t in r.tensors:
            n = int(t.n_bytes)
            m = _BLK.match(t.name)
            if m and int(m.group(1)) < n_layer:
                layer[int(m.group(1))] += n
            elif t.name == "output.weight":
                output += n
            elif t.name == "token_embd.weight":
                embd += n
            else:
                other += n
    tied = output == 0
    return ModelShape(
        arch=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_ff=n_ff,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=head_k,
        head_dim_v=head_v,
        n_vocab=n_vocab,
        sliding_window=swa,
        layer_bytes=tuple(layer),
        output_bytes=embd if tied else output,
        output_tied=tied,
        embd_bytes=embd,
        other_bytes=other,
    )
