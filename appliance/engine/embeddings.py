"""Pooled embeddings: inputs checked on the event loop, batches decoded on the runner's thread.

An embedding model gets another kind of context (engine/params.py): every token is an
output, the KV cache is unified, each input must sit whole in one micro-batch. Up to
`parallel` inputs share a decode, each as its own sequence; the pooled vector of each is
read back, L2-normalized, and the cache is cleared for the next batch.
"""

from __future__ import annotations

from typing import Callable

import llama_cpp as ll
import numpy as np

from ..errors import ContextLengthExceeded, EngineError, InvalidRequest
from .batch import Batch
from .validate import check_ids
from .vocab import Vocab


def embedding_inputs(vocab: Vocab, inputs: list[str | list[int]], context: int) -> list[list[int]]:
    """Each input as token ids; refused when empty, out of the vocabulary or over `context`."""
    if not inputs:
        raise InvalidRequest("input must not be empty", param="input")
    token_lists: list[list[int]] = []
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            toks = vocab.tokenize(item, add_special=True, parse_special=True)
        else:
            toks = [int(t) for t in item]
            check_ids(toks, vocab.n_vocab, "input")
        if not toks:
            raise InvalidRequest(f"input {i} is empty", param="input")
        if len(toks) > context:
            raise ContextLengthExceeded(
                f"input {i} has {len(toks)} tokens; this model's context is {context} tokens",
                param="input")
        token_lists.append(toks)
    return token_lists


def embed_batches(
    ctx: ll.llama_context_p,
    batch: Batch,
    token_lists: list[list[int]],
    *,
    max_seqs: int,
    n_embd: int,
    decode: Callable[[Batch], None],
    stop: Callable[[], bool] = lambda: False,
) -> list[list[float]]:
    """Decode the inputs `max_seqs` at a time (as many as fit the batch) and return one
    normalized vector per input. `decode` raises EngineError on failure; `stop()` is asked
    before each batch (the client went away: the model is not held for the rest)."""
    mem = ll.llama_get_memory(ctx)
    out: list[list[float]] = []
    i = 0
    while i < len(token_lists):
        if stop():
            raise EngineError("embedding cancelled: the client went away")
        b = batch
        b.clear()
        seqs = 0
        while i < len(token_lists) and seqs < max_seqs and b.free >= len(token_lists[i]):
            b.add_span(token_lists[i], 0, seqs, output_last=True)
            seqs += 1
            i += 1
        b.logits[: b.n] = 1  # pooling reads every token
        decode(b)
        for s in range(seqs):
            ptr = ll.llama_get_embeddings_seq(ctx, s)
            if not ptr:
                raise EngineError("the model gives no pooled embeddings")
            v = np.ctypeslib.as_array(ptr, shape=(n_embd,)).astype(np.float64)
            norm = float(np.linalg.norm(v))
            out.append((v / norm if norm > 0 else v).tolist())
        if mem:
            ll.llama_memory_clear(mem, True)
    return out
