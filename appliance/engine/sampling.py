"""One choice's sampler: a llama.cpp sampler chain plus an optional grammar, applied the fast way.

A grammar inside the chain costs a full-vocabulary grammar walk per token (73 ms/token on
Gemma's 262k vocabulary, measured), which would slow every stream of the batch. So, like
llama.cpp's common_sampler: sample unconstrained, check only the chosen token against the
grammar, and resample with the grammar over the whole vocabulary only on rejection. The
final token is accepted into the grammar exactly once (a second accept aborts the process)
and only after the grammar has said yes to it (accepting a rejected token aborts too).

The resample itself still walks the whole vocabulary (tens of ms). It only needs a copy of the
logits row and this sampler's own objects, so the runner can run it on a worker thread
(`start_resample`; ctypes releases the GIL) while the batch goes on without this one stream.
"""

from __future__ import annotations

import ctypes
import functools
import math
import re
import secrets
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import cast

import llama_cpp as ll
import numpy as np

from ..errors import EngineError, InvalidRequest
from .types import SamplingParams, TopLogprob

_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")], align=True)
assert _TOKEN_DATA.itemsize == ctypes.sizeof(ll.llama_token_data) == 12


@functools.lru_cache(maxsize=4)
def _ids(n_vocab: int) -> np.ndarray:
    """0..n_vocab-1 as int32, viewed as float32 (bit patterns kept) for the column fill."""
    ids = np.arange(n_vocab, dtype=np.int32).view(np.float32)
    ids.flags.writeable = False
    return ids


def make_grammar(vocab: ll.llama_vocab_p, gbnf: str, triggers: tuple[str, ...] = ()) -> ll.llama_sampler_p:
    """Parse GBNF into a grammar sampler (lazy when triggers are given); InvalidRequest if it fails."""
    if triggers:
        pats = [re.escape(t).encode() for t in triggers]
        arr = (ctypes.c_char_p * len(pats))(*pats)
        smpl = ll.llama_sampler_init_grammar_lazy_patterns(
            vocab, gbnf.encode(), b"root", arr, len(pats), (ll.llama_token * 0)(), 0
        )
    else:
        smpl = ll.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    if not smpl:
        raise InvalidRequest("the grammar could not be parsed", param="grammar")
    return cast("ll.llama_sampler_p", smpl)


class SlotSampler:
    """Sampler chain (+ grammar) of one choice; owns its llama.cpp objects until `free()`."""

    def __init__(
        self,
        vocab: ll.llama_vocab_p,
        n_vocab: int,
        params: SamplingParams,
        seed: int,
        eog_ids: list[int],
        grammar: ll.llama_sampler_p | None = None,
        n_ctx: int = 0,
    ) -> None:
        """`n_ctx`: the sequence's context, the penalties' window for `repeat_last_n = -1`."""
        self.n_vocab = n_vocab
        self.seed = seed
        self.grammar = grammar
        self._buf: np.ndarray | None = None
        self._saved: np.ndarray | None = None  # raw logits row a refused first pass left for resample
        self._inflight: "Future[int] | None" = None
        cp = ll.llama_sampler_chain_default_params()
        cp.no_perf = True
        self.chain = ll.llama_sampler_chain_init(cp)

        def add(smpl: ll.llama_sampler_p) -> None:
            ll.llama_sampler_chain_add(self.chain, smpl)

        bias = {int(k): float(v) for k, v in params.logit_bias.items()}
        if params.ignore_eos:
            for t in eog_ids:
                bias[t] = -math.inf
        last_n = params.repeat_last_n if params.repeat_last_n >= 0 else n_ctx
        penalties = last_n != 0 and (
            params.repeat_penalty != 1.0 or params.frequency_penalty != 0 or params.presence_penalty != 0)
        # Greedy with at most a logit bias is stateless: numpy's argmax over the row gives the
        # chain's pick without building a 128k-entry candidate array per token (measured on an
        # H100: that array was a fifth of the decode thread's time while the GPU sat idle).
        self._greedy = params.temperature <= 0 and not penalties
        self._bias_ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
        self._bias_vals = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
        self._bias_set = frozenset(bias)
        # llama.cpp's order (common/sampling.cpp): bias, penalties, then the filters from the
        # cheapest cut (top_k shrinks 128k candidates to k) to the temperature and the draw.
        if bias:
            arr = (ll.llama_logit_bias * len(bias))(*[ll.llama_logit_bias(t, b) for t, b in bias.items()])
            add(ll.llama_sampler_init_logit_bias(n_vocab, len(bias), arr))
        if penalties:
            add(ll.llama_sampler_init_penalties(
                n_vocab, last_n, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
            ))
        if params.temperature <= 0:
            add(ll.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(ll.llama_sampler_init_top_k(params.top_k))
            if params.typical_p < 1.0:
                add(ll.llama_sampler_init_typical(params.typical_p, 1))
            if params.top_p < 1.0:
                add(ll.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(ll.llama_sampler_init_min_p(params.min_p, 1))
            add(ll.llama_sampler_init_temp(params.temperature))
            add(ll.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        # In-graph (backend) sampling: what a chain needs the host for stays on the host.
        self.backend_ok = grammar is None and not params.logprobs
        self._attached: tuple[ll.llama_context_p, int] | None = None
        # What makes two chains interchangeable once in the graph: only stateless samplers
        # (no penalties' history) and a random seed (an explicit one must start its own draw).
        self.reuse_key: tuple[object, ...] | None = None
        if self.backend_ok and not penalties and params.seed is None:
            self.reuse_key = (params.temperature, params.top_k, params.typical_p, params.top_p, params.min_p,
                              tuple(sorted(bias.items())))

    @property
    def on_backend(self) -> bool:
        return self._attached is not None

    def attach(self, ctx: ll.llama_context_p, seq: int, resident: "Resident | None" = None) -> bool:
        """Run this chain inside the compute graph for sequence `seq` (llama.cpp's backend
        sampling): the logits row never crosses to the host and `sample` reads the token the
        graph drew. False where llama.cpp refuses; the chain then keeps sampling on the host.
        With n > 1 the runner attaches after the first token: every choice's first token
        comes from the first slot's one prompt row, which must reach the host raw.

        `resident`: the chain the slot's previous request left in the graph. Taken over when
        it is interchangeable with this one (no llama_set_sampler call, so llama.cpp does not
        re-plan its compute graph); else replaced and freed."""
        if self._attached is not None:
            return True
        if resident is not None and self.reuse_key is not None and resident.key == self.reuse_key \
                and resident.seq == seq and self.chain is not None:
            ll.llama_sampler_free(self.chain)  # never attached: ours alone
            self.chain = resident.chain
            self._attached = (ctx, seq)
            return True
        if not self.backend_ok or self.chain is None:
            if resident is not None:
                resident.free()
            return False
        ok = bool(ll.llama_set_sampler(ctx, seq, self.chain))  # replaces the resident, if any
        if resident is not None:
            if not ok:
                ll.llama_set_sampler(ctx, seq, None)
            ll.llama_sampler_free(resident.chain)  # out of the graph now
        if ok:
            self._attached = (ctx, seq)
        return ok

    def park(self) -> "Resident | None":
        """At the end of the request: hand over the chain, still in the graph, for the slot's
        next request (None when it cannot be reused; `free` then takes it out)."""
        if self._attached is None or self.reuse_key is None or self.chain is None:
            return None
        ctx, seq = self._attached
        r = Resident(self.reuse_key, self.chain, ctx, seq)
        self.chain = None
        self._attached = None
        return r

    def detach(self) -> None:
        """Take the chain out of the graph (before it is freed, or the context's next decode
        would use a freed sampler)."""
        if self._attached is not None:
            ctx, seq = self._attached
            self._attached = None
            ll.llama_set_sampler(ctx, seq, None)

    def sample(self, ctx: ll.llama_context_p, idx: int) -> int:
        """Pick the next token from output row `idx` and accept it (chain and grammar, once)."""
        tok = self.first_pass(ctx, idx)
        return tok if tok is not None else self.resample()

    def first_pass(self, ctx: ll.llama_context_p, idx: int) -> int | None:
        """The cheap pick (accepted), or None when the grammar refuses it: then the raw row is
        kept for `resample`, which must follow before this sampler is used again."""
        if self._attached is not None or (self.grammar is None and not self._greedy):
            return int(ll.llama_sampler_sample(self.chain, ctx, idx))  # applies and accepts
        row = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, idx), shape=(self.n_vocab,))
        if self._greedy:
            tok = self.greedy(row)  # nothing to accept: greedy and logit bias keep no state
            if self.grammar is None:
                return tok
        else:
            arr = self._candidates(row)
            ll.llama_sampler_apply(self.chain, ctypes.byref(arr))
            tok = int(arr.data[arr.selected].id)
        if self._grammar_allows(tok):
            self._accept(tok)
            return tok
        self._saved = row.copy()  # the context's row is overwritten by the next decode
        return None

    def greedy(self, row: np.ndarray) -> int:
        """The chain's greedy pick of a raw logits row with the logit bias applied (the lowest
        id among equal maxima, as llama.cpp's greedy sampler)."""
        best = int(row.argmax())
        if not self._bias_set:
            return best
        biased = row[self._bias_ids] + self._bias_vals
        if best in self._bias_set:
            tmp = row.copy()
            tmp[self._bias_ids] = biased
            return int(tmp.argmax())
        j = int(biased.argmax())
        b, top = float(biased[j]), float(row[best])
        if b > top or (b == top and int(self._bias_ids[j]) < best):
            return int(self._bias_ids[j])
        return best

    def resample(self) -> int:
        """The grammar over the whole vocabulary of the kept row, then the chain; accepted.
        Touches only this sampler's objects, so it may run off the decode thread."""
        assert self._saved is not None, "resample without a refused first pass"
        arr = self._candidates(self._saved)
        self._saved = None
        ll.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        ll.llama_sampler_apply(self.chain, ctypes.byref(arr))
        if arr.selected < 0:
            raise EngineError("the grammar allows no token here")
        tok = int(arr.data[arr.selected].id)
        if not self._grammar_allows(tok):
            raise EngineError("the grammar allows no token the sampler would pick")
        self._accept(tok)
        return tok

    def start_resample(self, pool: Executor) -> "Future[int]":
        """`resample` on `pool`; `free` waits for it, so the objects it uses outlive it."""
        self._inflight = pool.submit(self.resample)
        return self._inflight

    def _accept(self, tok: int) -> None:
        ll.llama_sampler_accept(self.grammar, tok)
        ll.llama_sampler_accept(self.chain, tok)

    def _candidates(self, row: np.ndarray) -> ll.llama_token_data_array:
        if self._buf is None:
            self._buf = np.zeros(self.n_vocab, dtype=_TOKEN_DATA)
        # Filled as three float32 columns (the ids' bit patterns in the first): plain float
        # copies run without the GIL and ~30 % faster than structured-field assignment, which
        # matters when a grammar resample fills this on a worker beside the decode thread.
        cols = self._buf.view(np.float32).reshape(self.n_vocab, 3)
        cols[:, 0] = _ids(self.n_vocab)
        cols[:, 1] = row
        cols[:, 2] = 0.0
        data = self._buf.ctypes.data_as(ctypes.POINTER(ll.llama_token_data))
        return ll.llama_token_data_array(data=data, size=self.n_vocab, selected=-1, sorted=False)

    def _grammar_allows(self, tok: int) -> bool:
        one = ll.llama_token_data(id=tok, logit=1.0, p=0.0)
        arr = ll.llama_token_data_array(data=ctypes.pointer(one), size=1, selected=-1, sorted=False)
        ll.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        return arr.data[0].logit != -math.inf

    def free(self) -> None:
        self.detach()
        if self._inflight is not None:
            self._inflight.exception()  # wait: a resample may still be using the objects below
            self._inflight = None
        if self.chain:
            ll.llama_sampler_free(self.chain)
            self.chain = None
        if self.grammar:
            ll.llama_sampler_free(self.grammar)
            self.grammar = None


@dataclass
class Resident:
    """A chain left in the compute graph for one sequence after its request ended.

    Attaching or detaching a chain makes llama.cpp re-plan (reserve) its compute graph at the
    next decode, which stalls every stream: measured on an H200 with the 8B-shaped model, a
    request's first token took 27 ms instead of 13. Most clients send the same settings each
    time, so the slot's next request takes the chain over instead (SlotSampler.attach)."""

    key: tuple[object, ...]
    chain: ll.llama_sampler_p
    ctx: ll.llama_context_p
    seq: int

    def free(self) -> None:
        ll.llama_set_sampler(self.ctx, self.seq, None)
        ll.llama_sampler_free(self.chain)


def use_backend_sampling(setting: str | bool, n_gpu_layers: int) -> bool:
    """models.toml's `backend_sampling`: "auto" samples in the graph when the output layer
    runs on a GPU (the logits row then stays there); on the CPU it saves no copy and measured
    no faster (docs/engine.md)."""
    if setting != "auto":
        return bool(setting)
    return n_gpu_layers != 0 and bool(ll.llama_supports_gpu_offload())


def random_seed() -> int:
    return secrets.randbits(32)


@dataclass(frozen=True)
class RowLogprobs:
    logprob: float
    top: list[tuple[int, float]]


def row_logprobs(ctx: ll.llama_context_p, idx: int, n_vocab: int, token: int, top_n: int) -> RowLogprobs:
    """Log-softmax of the raw logits row (before penalties and temperature, as OpenAI reports)."""
    row = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, idx), shape=(n_vocab,)).astype(np.float64)
    m = row.max()
    lse = m + math.log(float(np.exp(row - m).sum()))
    top: list[tuple[int, float]] = []
    if top_n > 0:
        k = min(top_n, n_vocab)
        ids = np.argpartition(row, -k)[-k:]
        ids = ids[np.argsort(row[ids])[::-1]]
        top = [(int(i), float(row[i] - lse)) for i in ids]
    return RowLogprobs(float(row[token] - lse), top)


def top_logprob(token_id: int, logprob: float, piece: bytes) -> TopLogprob:
    return TopLogprob(token=piece.decode("utf-8", errors="replace"), logprob=logprob, bytes=list(piece))
