"""From sampled tokens to what a caller receives: deltas, finish reasons, logprobs, usage.

As vLLM's `OutputProcessor`: the runner hands each picked token here and gets the `Delta`
to deliver. Text goes through the choice's `TextStream` (whole UTF-8 characters, stop
strings held back and never sent); an end-of-generation token ends the choice with
`stop`, a found stop string too, `max_tokens` with `length`. Logprobs are read from the
token's logits row (before penalties and temperature), so they must be taken before the
next decode overwrites it.
"""

from __future__ import annotations

from typing import Callable

from .slots import Choice, Job
from .sampling import RowLogprobs
from .types import Delta, FinishReason, TokenLogprob, TopLogprob, Usage
from .vocab import Vocab

RowReader = Callable[[int, int, int], RowLogprobs]  # (row, token, top_n) -> log-softmax facts


class OutputProcessor:
    """Turns one runner's sampled tokens into deltas; runs on the runner's thread."""

    def __init__(self, vocab: Vocab, row_logprobs: RowReader) -> None:
        self.vocab = vocab
        self._row = row_logprobs

    def token(self, job: Job, ch: Choice, tok: int, row: int, now: float) -> Delta:
        """Account for a picked token and return its delta; `row` is its logits row (or -1
        when the row is gone: only requests without logprobs pick off the row)."""
        if job.t_first is None:
            job.t_first = now
        job.t_last = now
        ch.generated += 1
        job.completion += 1
        p = job.params
        logprobs: list[TokenLogprob] = []
        finish: FinishReason | None = None
        if self.vocab.is_eog(tok) and not p.ignore_eos:
            text = ch.text.flush()
            finish = "stop"
            logprobs, ch.held_logprobs = ch.held_logprobs, []  # held text went out just now
        else:
            piece = self.vocab.special_piece(tok) if tok in job.preserved else self.vocab.piece(tok)
            if p.logprobs:
                ch.held_logprobs.append(self.logprob(row, tok, piece, p.top_logprobs))
            text = ch.text.feed(piece)
            if ch.text.stopped:
                finish = "stop"
            elif ch.generated >= job.max_tokens:
                text += ch.text.flush()
                finish = "length"
            # a token's logprob goes out with the delta that carries its text; a stop string's
            # tokens carry none (cut from the text, so from the logprobs: llama-server does too)
            if text or finish == "length":
                logprobs, ch.held_logprobs = ch.held_logprobs, []
            elif ch.text.stopped:
                ch.held_logprobs = []
        return Delta(ch.index, text, logprobs, finish, (tok,))

    def logprob(self, row: int, tok: int, piece: bytes, top_n: int) -> TokenLogprob:
        r = self._row(row, tok, top_n)
        top = []
        for t, lp in r.top:
            pc = self.vocab.piece(t)
            top.append(TopLogprob(pc.decode("utf-8", errors="replace"), lp, list(pc)))
        return TokenLogprob(piece.decode("utf-8", errors="replace"), r.logprob, list(piece), top)


def usage(job: Job) -> Usage:
    """The request's usage so far (final once the job is done)."""
    u = Usage(prompt_tokens=len(job.prompt), completion_tokens=job.completion,
              cached_tokens=job.cached, prompt_eval_tokens=job.evaluated)
    if job.t_first is not None:
        u.ttft_s = job.t_first - job.t_submit
        if job.t_last is not None and job.completion > job.params.n and job.t_last > job.t_first:
            u.decode_tokens_per_s = (job.completion - job.params.n) / (job.t_last - job.t_first)
    return u
