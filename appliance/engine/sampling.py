"""One choice's sampler: a llama.cpp sampler chain, or numpy's argmax for greedy requests.

Constraints are not applied here: llguidance's masks (engine/guidance.py) are written into
the logits row before the pick, so the chain only ever sees allowed tokens.
"""

from __future__ import annotations

import ctypes
import math
import secrets
from dataclasses import dataclass

import llama_cpp as ll
import numpy as np

from .keepgil import bind
from .types import SamplingParams, TopLogprob

# The token an in-graph chain drew is in host memory once the step is synchronized (the
# runner calls llama_synchronize, GIL released, before sampling): reading it needs no GIL
# hand-off. A chain on the host does real work over the row and keeps llama_cpp's binding.
_read_backend_sample = bind("llama_sampler_sample", [ll.llama_sampler_p_ctypes, ll.llama_context_p_ctypes,
                                                     ctypes.c_int32], ll.llama_token)


class SlotSampler:
    """Sampler chain of one choice; owns its llama.cpp objects until `free()`."""

    def __init__(
        self,
        vocab: ll.llama_vocab_p,
        n_vocab: int,
        params: SamplingParams,
        seed: int,
        eog_ids: list[int],
        n_ctx: int = 0,
    ) -> None:
        """`n_ctx`: the sequence's context, the penalties' window for `repeat_last_n = -1`."""
        self.n_vocab = n_vocab
        self.seed = seed
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
        self.backend_ok = not params.logprobs
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

    def sample(self, ctx: ll.llama_context_p, idx: int, keep_gil: bool = False) -> int:
        """Pick the next token from output row `idx` (accepted into the chain).

        `keep_gil`: the caller has synchronized the step and no device is remote, so an
        in-graph chain's token is already on the host; read it without a GIL hand-off. With
        RPC workers the read keeps llama_cpp's binding: if it ever waited on a dead worker
        while holding the GIL, ggml's abort callback could not reach the runners."""
        if self._attached is not None:
            read = _read_backend_sample if keep_gil else ll.llama_sampler_sample
            return int(read(self.chain, ctx, idx))  # accepts
        if not self._greedy:
            return int(ll.llama_sampler_sample(self.chain, ctx, idx))  # applies and accepts
        row = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, idx), shape=(self.n_vocab,))
        return self.greedy(row)  # nothing to accept: greedy and logit bias keep no state

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

    def free(self) -> None:
        self.detach()
        if self.chain:
            ll.llama_sampler_free(self.chain)
            self.chain = None


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


# A token the row rules out (a grammar's mask writes -inf into it) gets OpenAI's floor: -inf
# is no JSON number (json writes `-Infinity`, orjson null), and clients expect a float.
MIN_LOGPROB = -9999.0


def _floor(x: float) -> float:
    return x if x >= MIN_LOGPROB else MIN_LOGPROB


def row_logprobs(ctx: ll.llama_context_p, idx: int, n_vocab: int, token: int, top_n: int) -> RowLogprobs:
    """Log-softmax of the raw logits row (before penalties and temperature, as OpenAI reports;
    after a grammar's mask), at least MIN_LOGPROB."""
    row = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, idx), shape=(n_vocab,)).astype(np.float64)
    m = row.max()
    lse = m + math.log(float(np.exp(row - m).sum()))
    top: list[tuple[int, float]] = []
    if top_n > 0:
        k = min(top_n, n_vocab)
        ids = np.argpartition(row, -k)[-k:]
        ids = ids[np.argsort(row[ids])[::-1]]
        top = [(int(i), _floor(float(row[i] - lse))) for i in ids]
    return RowLogprobs(_floor(float(row[token] - lse)), top)


def top_logprob(token_id: int, logprob: float, piece: bytes) -> TopLogprob:
    return TopLogprob(token=piece.decode("utf-8", errors="replace"), logprob=logprob, bytes=list(piece))
