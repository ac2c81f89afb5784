"""A `llama_batch` whose arrays are numpy buffers we own.

Filling llama.cpp's own batch goes through ctypes pointer indexing, five calls per token;
with numpy-backed arrays a prompt chunk is a few slice assignments, which keeps the
per-step Python cost small next to `llama_decode`.
"""

from __future__ import annotations

import ctypes
from typing import Sequence

import llama_cpp as ll
import numpy as np


class Batch:
    """Tokens for one `llama_decode`: each token belongs to exactly one sequence."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        base = self.seq.ctypes.data
        i32p = ctypes.POINTER(ctypes.c_int32)
        self._seq_ptrs = (i32p * capacity)(*[ctypes.cast(base + 4 * i, i32p) for i in range(capacity)])
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    @property
    def free(self) -> int:
        return self.capacity - self.n

    def add(self, tok: int, pos: int, seq: int, output: bool) -> int:
        """Append one token; return its row index (where its logits will be)."""
        i = self.n
        self.token[i] = tok
        self.pos[i] = pos
        self.seq[i] = seq
        self.logits[i] = output
        self.n = i + 1
        return i

    def add_span(self, toks: Sequence[int], pos0: int, seq: int, output_last: bool) -> int:
        """Append consecutive tokens of one sequence; return the last one's row index."""
        i, k = self.n, len(toks)
        self.token[i : i + k] = toks
        self.pos[i : i + k] = np.arange(pos0, pos0 + k, dtype=np.int32)
        self.seq[i : i + k] = seq
        self.logits[i : i + k] = 0
        if output_last:
            self.logits[i + k - 1] = 1
        self.n = i + k
        return i + k - 1

    def struct(self) -> ll.llama_batch:
        return ll.llama_batch(
            n_tokens=self.n,
            token=self.token.ctypes.data_as(ctypes.POINTER(ll.llama_token)),
            embd=None,
            pos=self.pos.ctypes.data_as(ctypes.POINTER(ll.llama_pos)),
            n_seq_id=self.n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            seq_id=self._seq_ptrs,
            logits=self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )
