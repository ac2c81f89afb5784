"""Prompt logprobs (`echo` with `logprobs`, evaluation tools scoring text): the
log-probability of each prompt token given the ones before it.

Runs on the runner's thread in one free slot's sequence, emptied before and after (its cached
prefix is dropped). Every prompt position needs its own logits row while a generation context
gives each sequence one row per decode (engine/params.py: n_outputs_max_per_seq = 1, the bound
of in-graph sampling, and n_outputs_max keeps compute buffers small), so the prompt is read
`max_rows` tokens per decode: one decode per token, slow for long prompts, fine for scoring.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .batch import Batch
from .types import TokenLogprob

Logprob = Callable[[int, int, bytes, int], TokenLogprob]  # (row, token, piece, top_n)


def score_tokens(tokens: Sequence[int], *, seq: int, batch: Batch, max_rows: int,
                 decode: Callable[[Batch], None], logprob: Logprob, piece: Callable[[int], bytes],
                 top_n: int) -> list[TokenLogprob]:
    """One entry per token; the first has no context, so its logprob is 0.0 and its top
    list empty (APIs show it as null)."""
    first = piece(tokens[0])
    out = [TokenLogprob(first.decode("utf-8", errors="replace"), 0.0, list(first), [])]
    step = max(1, min(max_rows, batch.capacity))
    for start in range(0, len(tokens) - 1, step):
        chunk = tokens[start:start + step]
        batch.clear()
        for k, t in enumerate(chunk):
            batch.add(t, start + k, seq, output=True)
        decode(batch)
        for k in range(len(chunk)):
            nxt = start + k + 1
            if nxt < len(tokens):
                out.append(logprob(k, tokens[nxt], piece(tokens[nxt]), top_n))
    return out
