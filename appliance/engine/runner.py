"""One loaded model: llama.cpp model + context with one KV stream per slot, decoded by one thread.

Continuous batching: each step puts every generating slot's next token plus chunks of
prompts still being read into ONE `llama_batch` and calls `llama_decode` once (ctypes
releases the GIL, so the event loop keeps serving). Each choice is sampled by its own
sampler chain from its output row. A long prompt is read in chunks so it never stalls the
slots that are generating.

Everything that touches the llama context runs on the runner's thread; the asyncio side
only tokenizes (read-only vocabulary), validates, and queues requests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import llama_cpp as ll
import numpy as np

from ..config import ModelConfig
from ..errors import ContextLengthExceeded, EngineError, InvalidRequest
from . import llamalog
from .batch import Batch
from .chat import ChatPrompt, render_chat
from .cpufeatures import extra_buffers_safe
from .generation import _END, Generation, post_many
from .guidance import StepMasks, logits_row
from .sampling import SlotSampler, make_grammar, random_seed, row_logprobs
from .textout import TextStream
from .types import Delta, EmbeddingResult, GenerationRequest, SamplingParams, TokenLogprob, TopLogprob, Usage
from .vocab import Vocab

log = logging.getLogger(__name__)

DEFAULT_N_BATCH = 512
ARRIVAL_WAIT_S = 0.02  # at most this long for the event loop before an idle runner's first step
MAX_TOP_LOGPROBS = 20
_KV_TYPES = {"f16": ll.GGML_TYPE_F16, "q8_0": ll.GGML_TYPE_Q8_0, "q4_0": ll.GGML_TYPE_Q4_0}
_SPLIT = {"none": ll.LLAMA_SPLIT_MODE_NONE, "layer": ll.LLAMA_SPLIT_MODE_LAYER}


@dataclass
class RunnerStats:
    """Counters since load (read from any thread; written by the runner's thread)."""

    requests: int = 0
    prompt_tokens_evaluated: int = 0
    cached_tokens: int = 0
    tokens_generated: int = 0
    steps: int = 0
    decode_failures: int = 0


@dataclass(eq=False)
class _Choice:
    index: int
    sampler: SlotSampler
    text: TextStream
    generated: int = 0
    pending: int | None = None  # sampled, not yet decoded
    deferred: "Future[int] | None" = None  # a grammar resample running off the decode thread
    matcher: Any = None  # llguidance matcher of a constrained choice (engine/guidance.py)


@dataclass(eq=False)
class _Job:
    gen: Generation
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    samplers: list[SlotSampler]
    t_submit: float
    cancelled: bool = False
    done: bool = False
    slots: list["_Slot"] = field(default_factory=list)
    active: int = 0
    cached: int = 0
    evaluated: int = 0
    completion: int = 0
    t_first: float | None = None
    t_last: float | None = None
    out: list[object] = field(default_factory=list)  # items for the consumer, sent once per step
    queued: bool = False  # in the runner's outbox for this step's delivery
    matchers: list[Any] = field(default_factory=list)  # one per choice when constrained


@dataclass(eq=False)
class _Slot:
    seq: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV sits at positions 0..len-1
    job: _Job | None = None
    choice: _Choice | None = None
    reading: bool = False  # reading the prompt (the first slot of a job)
    waiting: bool = False  # n > 1: waiting for the first slot to finish the prompt
    last_used: float = 0.0


@dataclass(frozen=True)
class _Task:
    """Work that must run on the runner's thread (warm-up, embeddings), with its failure path."""

    run: Callable[[], None]
    fail: Callable[[BaseException], None]


@dataclass(eq=False)
class _Part:
    """A slot's tokens in this step's batch."""

    slot: _Slot
    tokens: list[int]
    pos0: int
    output: bool
    prompt: bool
    idx: int = -1


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n], dtype=np.int32) != np.asarray(b[:n], dtype=np.int32)
    i = int(np.argmax(x))
    return n if not x[i] else i


class Runner:
    """A loaded model serving generation (or embeddings) through `parallel` slots."""

    def __init__(
        self,
        paths: list[Path],
        cfg: ModelConfig,
        *,
        n_gpu_layers: int = -1,
        main_gpu: int = 0,
        split_mode: str = "none",
        model_id: str = "",
        n_threads: int | None = None,
        n_batch: int = DEFAULT_N_BATCH,
        extra_buffers: bool | None = None,
        resample_pool: Executor | None = None,
        arrival_wait_s: float = ARRIVAL_WAIT_S,
    ) -> None:
        llamalog.install()
        ll.llama_backend_init()
        self.model_id = model_id
        self.cfg = cfg
        self.context = cfg.context
        self.parallel = cfg.parallel
        self.embedding = cfg.embedding
        self.stats = RunnerStats()
        self.last_progress = time.monotonic()
        self.in_call_since: float | None = None
        self._closed = False
        self._broken: BaseException | None = None
        self.model: ll.llama_model_p | None = None
        self.ctx: ll.llama_context_p | None = None
        threads = n_threads or os.cpu_count() or 1

        mp = ll.llama_model_default_params()
        mp.n_gpu_layers = n_gpu_layers
        mp.main_gpu = main_gpu
        if split_mode not in _SPLIT:
            raise ValueError(f"split_mode must be one of {sorted(_SPLIT)}")
        mp.split_mode = _SPLIT[split_mode]
        mp.use_extra_bufts = extra_buffers_safe() if extra_buffers is None else extra_buffers
        with llamalog.capture() as chunks:
            self.model = ll.llama_model_load_from_file(str(paths[0]).encode(), mp)
            if not self.model:
                raise EngineError(f"llama.cpp could not load {paths[0]}")
            self.vocab = Vocab(self.model, Vocab.file_key(paths[0]))
            self.arch = self.vocab.meta("general.architecture") or ""
            cp = ll.llama_context_default_params()
            cp.n_ctx = self.context * self.parallel
            cp.n_seq_max = self.parallel
            cp.kv_unified = False
            cp.n_threads = cp.n_threads_batch = threads
            cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_AUTO
            cp.type_k = cp.type_v = _KV_TYPES[cfg.kv_cache_type]
            if self.embedding:
                # every token is an output when pooling; one input must fit one ubatch
                cp.n_batch = cp.n_ubatch = max(self.context, 32)
                # pooling needs each input whole in one ubatch; per-seq streams split the batch
                # into equal-length ubatches (measured: the longer input's vector came out wrong)
                cp.kv_unified = True
                cp.n_outputs_max = 0
                cp.n_outputs_max_per_seq = 0
                cp.embeddings = True
                has_pooling = self.vocab.meta(f"{self.arch}.pooling_type") is not None
                cp.pooling_type = ll.LLAMA_POOLING_TYPE_UNSPECIFIED if has_pooling else ll.LLAMA_POOLING_TYPE_MEAN
            else:
                cp.n_batch = cp.n_ubatch = n_batch
                cp.n_outputs_max = self.parallel  # logits rows: one per slot (cuts compute buffers)
            self.ctx = ll.llama_init_from_model(self.model, cp)
            if not self.ctx:
                ll.llama_model_free(self.model)
                self.model = None
                raise EngineError(f"llama.cpp could not create a context for {paths[0]} "
                                  f"(n_ctx={cp.n_ctx}, n_seq_max={cp.n_seq_max})")
        self.load_log = llamalog.join_lines(chunks)
        self.buffers = llamalog.parse_buffer_sizes(self.load_log)
        self.n_batch = int(cp.n_batch)
        self.n_embd = ll.llama_model_n_embd(self.model)
        self.model_bytes = int(ll.llama_model_size(self.model))
        self.context_bytes = self.buffers.total("KV", "RS", "compute", "output")
        self.mem = ll.llama_get_memory(self.ctx)
        self._batch = Batch(self.n_batch)
        self._slots = [_Slot(seq=i) for i in range(self.parallel)]
        self._pending: deque[_Job] = deque()
        self._tasks: deque[_Task] = deque()
        self._outbox: list[_Job] = []  # jobs with items to deliver at the end of this step
        self._resampler = resample_pool  # grammar resamples (made on first use unless given)
        self._masks: StepMasks | None = None  # llguidance masks (made on first constrained step)
        self._own_resampler = resample_pool is None
        self._arrival_wait_s = arrival_wait_s
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"runner-{model_id or 'model'}", daemon=True)
        self._thread.start()

    # --- properties for the scheduler -------------------------------------------------------

    @property
    def n_slots(self) -> int:
        return self.parallel

    @property
    def busy_slots(self) -> int:
        return sum(1 for s in self._slots if s.job is not None)

    @property
    def queued(self) -> int:
        """Requests accepted but not yet in a slot."""
        return len(self._pending)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def chat_template(self) -> str | None:
        return self.cfg.chat_template or self.vocab.chat_template

    @property
    def bos_text(self) -> str:
        return self.vocab.token_text(self.vocab.bos)

    @property
    def eos_text(self) -> str:
        return self.vocab.token_text(self.vocab.eos)

    # --- tokenizer -----------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self.vocab.tokenize(text, add_special, parse_special)

    def detokenize(self, tokens: list[int], special: bool = False) -> str:
        self._check_ids(tokens, "tokens")
        return self.vocab.detokenize(tokens, special)

    def piece(self, token: int) -> bytes:
        """The bytes one generated token adds to the output text."""
        return self.vocab.piece(token)

    # --- generation ------------------------------------------------------------------------------

    def generate(self, req: GenerationRequest) -> Generation:
        """Validate, tokenize and queue a request; iterate the result for its deltas.

        Raises InvalidRequest / ContextLengthExceeded before anything is decoded. Must be
        called from the event loop that will consume the Generation.
        """
        return self.generate_batch([req])[0]

    def generate_batch(self, reqs: Sequence[GenerationRequest]) -> list[Generation]:
        """Queue several requests at once: they are admitted in the same step (benchmarks, tests
        that need a fixed batch makeup). All are validated before any is queued."""
        self._check_open()
        jobs: list[_Job] = []
        try:
            for req in reqs:
                jobs.append(self._prepare(req))
        except BaseException:
            for j in jobs:
                for smp in j.samplers:
                    smp.free()
            raise
        with self._cond:
            if self._closed:
                for j in jobs:
                    for smp in j.samplers:
                        smp.free()
                raise EngineError("the model was unloaded")
            self._pending.extend(jobs)
            self._cond.notify()
        return [j.gen for j in jobs]

    def _prepare(self, req: GenerationRequest) -> _Job:
        if self.embedding:
            raise InvalidRequest(f"model {self.model_id!r} is an embedding model", param="model")
        p = req.params
        self._validate(p)
        if isinstance(req.prompt, str):
            self._refuse_hopeless(req.prompt)
            prompt = self.vocab.tokenize(req.prompt, add_special=req.add_special, parse_special=True)
        else:
            prompt = [int(t) for t in req.prompt]
            self._check_ids(prompt, "prompt")
        if not prompt:
            raise InvalidRequest("the prompt is empty", param="prompt")
        if len(prompt) >= self.context:
            raise ContextLengthExceeded(
                f"the prompt has {len(prompt)} tokens; this model's context is {self.context} tokens",
                param="prompt",
            )
        room = self.context - len(prompt)
        if p.max_tokens is not None and p.max_tokens > room:
            raise ContextLengthExceeded(
                f"the prompt ({len(prompt)} tokens) plus max_tokens ({p.max_tokens}) exceeds "
                f"this model's context of {self.context} tokens",
                param="max_tokens",
            )
        max_tokens = p.max_tokens if p.max_tokens is not None else room
        base_seed = p.seed if p.seed is not None else random_seed()
        samplers: list[SlotSampler] = []
        try:
            for i in range(p.n):
                grammar = make_grammar(self.vocab.vocab, p.grammar, p.grammar_triggers) if p.grammar else None
                samplers.append(SlotSampler(self.vocab.vocab, self.vocab.n_vocab, p, base_seed + i,
                                            self.vocab.eog_ids, grammar))
        except BaseException:
            for smp in samplers:
                smp.free()
            raise
        loop = asyncio.get_running_loop()
        job: _Job
        gen = Generation(loop, p.n, lambda: self._cancel(job), req.request_id)
        job = _Job(gen=gen, prompt=prompt, params=p, max_tokens=max_tokens, samplers=samplers,
                   t_submit=time.monotonic(),
                   matchers=p.constraint.fork(p.n) if p.constraint is not None else [])  # type: ignore[attr-defined]
        return job

    def _refuse_hopeless(self, text: str) -> None:
        """Refuse, without tokenizing, a string prompt too long to fit whatever it tokenizes to:
        tokenizing megabytes runs on the event loop and would stall every stream. Safe: a prompt
        that fits has fewer than `context` tokens, each covering at most `max_chars_per_token`
        characters (see Vocab), so it has fewer than context * max_chars_per_token characters."""
        per_token = self.vocab.max_chars_per_token
        if per_token is not None and len(text) > self.context * per_token:
            raise ContextLengthExceeded(
                f"the prompt has {len(text)} characters, more than this model's context of "
                f"{self.context} tokens can hold",
                param="prompt",
            )

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
    ) -> ChatPrompt:
        """Render messages with this model's template (catalog's, GGUF's, or the default)."""
        return render_chat(self.chat_template, messages, tools, tool_choice,
                           bos=self.bos_text, eos=self.eos_text, arch=self.arch)

    def _validate(self, p: SamplingParams) -> None:
        if p.n < 1:
            raise InvalidRequest("n must be at least 1", param="n")
        if p.n > self.parallel:
            raise InvalidRequest(f"n must be at most {self.parallel} for this model (its parallel slots)", param="n")
        if p.max_tokens is not None and p.max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1", param="max_tokens")
        if not (p.temperature >= 0 and math.isfinite(p.temperature)):
            raise InvalidRequest("temperature must be >= 0", param="temperature")
        if not (0 < p.top_p <= 1):
            raise InvalidRequest("top_p must be in (0, 1]", param="top_p")
        if p.top_k < 0:
            raise InvalidRequest("top_k must be >= 0", param="top_k")
        if not (0 <= p.min_p <= 1):
            raise InvalidRequest("min_p must be in [0, 1]", param="min_p")
        if not (p.repeat_penalty > 0 and math.isfinite(p.repeat_penalty)):
            raise InvalidRequest("repeat_penalty must be > 0", param="repeat_penalty")
        for name in ("presence_penalty", "frequency_penalty"):
            if not math.isfinite(getattr(p, name)):
                raise InvalidRequest(f"{name} must be finite", param=name)
        if not (0 <= p.top_logprobs <= MAX_TOP_LOGPROBS):
            raise InvalidRequest(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]", param="top_logprobs")
        self._check_ids(list(p.logit_bias), "logit_bias")
        for v in p.logit_bias.values():
            if math.isnan(v):
                raise InvalidRequest("logit_bias values must be numbers", param="logit_bias")

    def _check_ids(self, ids: Sequence[int], param: str) -> None:
        n = self.vocab.n_vocab
        for t in ids:
            if not (0 <= int(t) < n):
                raise InvalidRequest(f"token id {t} is out of range for this model's vocabulary (0..{n - 1})",
                                     param=param)

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError("the model was unloaded")
        if self._broken is not None:
            raise EngineError(f"the model's decoder stopped: {self._broken}")

    def _cancel(self, job: _Job) -> None:
        with self._cond:
            if not job.done and not job.cancelled:
                job.cancelled = True
                self._cond.notify()

    # --- embeddings ----------------------------------------------------------------------------

    async def embed(self, inputs: list[str | list[int]]) -> EmbeddingResult:
        """Pooled, L2-normalized embeddings, one per input, computed in batches of `parallel`."""
        self._check_open()
        if not self.embedding:
            raise InvalidRequest(f"model {self.model_id!r} is not an embedding model", param="model")
        if not inputs:
            raise InvalidRequest("input must not be empty", param="input")
        token_lists: list[list[int]] = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                toks = self.vocab.tokenize(item, add_special=True, parse_special=True)
            else:
                toks = [int(t) for t in item]
                self._check_ids(toks, "input")
            if not toks:
                raise InvalidRequest(f"input {i} is empty", param="input")
            if len(toks) > self.context:
                raise ContextLengthExceeded(
                    f"input {i} has {len(toks)} tokens; this model's context is {self.context} tokens",
                    param="input")
            token_lists.append(toks)
        vectors = await self._call(lambda: self._embed_batches(token_lists))
        return EmbeddingResult(vectors=vectors, prompt_tokens=sum(map(len, token_lists)))

    def _embed_batches(self, token_lists: list[list[int]]) -> list[list[float]]:
        out: list[list[float]] = []
        i = 0
        while i < len(token_lists):
            b = self._batch
            b.clear()
            seqs = 0
            while i < len(token_lists) and seqs < self.parallel and b.free >= len(token_lists[i]):
                b.add_span(token_lists[i], 0, seqs, output_last=True)
                seqs += 1
                i += 1
            b.logits[: b.n] = 1  # pooling reads every token
            self._decode_or_raise(b)
            for s in range(seqs):
                ptr = ll.llama_get_embeddings_seq(self.ctx, s)
                if not ptr:
                    raise EngineError("the model gives no pooled embeddings")
                v = np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).astype(np.float64)
                norm = float(np.linalg.norm(v))
                out.append((v / norm if norm > 0 else v).tolist())
            if self.mem:
                ll.llama_memory_clear(self.mem, True)
            self.stats.prompt_tokens_evaluated += b.n
        return out

    # --- warm-up ---------------------------------------------------------------------------

    def warmup(self) -> None:
        """One decode at full batch (every slot) so compute pools are allocated; synchronous.

        Call from a loader thread (it blocks), before memory is measured.
        """
        self._check_open()
        done = threading.Event()
        err: list[BaseException] = []

        def task() -> None:
            try:
                free = [s for s in self._slots if s.job is None]
                b = self._batch
                b.clear()
                tok = self.vocab.bos if 0 <= self.vocab.bos < self.vocab.n_vocab else 0
                for s in free:
                    b.add(tok, 0, s.seq, output=True)
                    s.cached = []
                    if self.mem:
                        ll.llama_memory_seq_rm(self.mem, s.seq, -1, -1)
                if b.n:
                    self._decode_or_raise(b)
                for s in free:
                    if self.mem:
                        ll.llama_memory_seq_rm(self.mem, s.seq, -1, -1)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                err.append(e)
            finally:
                done.set()

        def fail(e: BaseException) -> None:
            err.append(e)
            done.set()

        self._submit(_Task(task, fail))
        done.wait()
        if err:
            raise err[0]

    async def _call(self, fn: Callable[[], object]) -> object:
        """Run `fn` on the runner's thread (it owns the context) and await its result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[object] = loop.create_future()

        def task() -> None:
            try:
                res = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting caller
                loop.call_soon_threadsafe(lambda: fut.done() or fut.set_exception(e))
            else:
                loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(res))

        def fail(e: BaseException) -> None:
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_exception(e))

        self._submit(_Task(task, fail))
        return await fut

    def _submit(self, task: "_Task") -> None:
        with self._cond:
            if self._closed:
                raise EngineError("the model was unloaded")
            self._tasks.append(task)
            self._cond.notify()

    # --- the decode thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closed and not self._tasks and not self._pending and not self.busy_slots:
                        self._cond.wait()
                    if self._closed:
                        return
                    tasks = list(self._tasks)
                    self._tasks.clear()
                for t in tasks:
                    self.in_call_since = time.monotonic()
                    t.run()
                    self.in_call_since = None
                    self.last_progress = time.monotonic()
                self._step()
        except BaseException as e:  # a bug or a llama.cpp failure: fail everyone, stop serving
            log.exception("runner %s: decode loop failed", self.model_id)
            self._broken = e
            self._fail_all(EngineError(f"the model's decoder stopped: {e}"))

    def _step(self) -> None:
        with self._cond:
            self._drop_cancelled()
            loop = self._pending[0].gen._loop if self._pending and not self.busy_slots else None
        if loop is not None:
            self._let_arrivals_queue(loop)
        with self._cond:
            self._admit()
        self._collect_resamples()
        parts = self._plan()
        if not parts:
            self._flush()  # cancelled jobs' ends
            return
        self.in_call_since = time.monotonic()
        b = self._fill(parts)
        self._start_masks(parts)  # constrained streams' masks, computed while the batch decodes
        ret = ll.llama_decode(self.ctx, b.struct())
        if self._masks is not None:
            self._masks.wait()
        if ret == 0:
            self._after(parts)
        else:
            self._decode_failed(parts, ret)
        self.in_call_since = None
        self.stats.steps += 1
        self.last_progress = time.monotonic()
        self._flush()

    def _start_masks(self, parts: list[_Part]) -> None:
        items = []
        for p in parts:
            if not p.output or p.slot.job is None:
                continue
            slots = p.slot.job.slots if p.prompt else [p.slot]  # a prompt's row serves all its choices
            items += [(s.choice.matcher, s.seq) for s in slots if s.choice is not None and s.choice.matcher is not None]
        if items:
            if self._masks is None:
                self._masks = StepMasks(self.parallel, self.vocab.n_vocab)
            self._masks.start(items)

    def _let_arrivals_queue(self, loop: asyncio.AbstractEventLoop) -> None:
        """Idle, woken by a request: let the event loop finish what it is running before the
        first step. Requests that arrive together (clients released by the same step) are
        handled in the same loop iterations; without this the first one starts a prompt step
        alone and the others wait a whole step for theirs. One loop round trip, bounded."""
        done = threading.Event()
        try:
            loop.call_soon_threadsafe(done.set)
        except RuntimeError:  # the loop is closed
            return
        done.wait(self._arrival_wait_s)

    def _drop_cancelled(self) -> None:
        for s in self._slots:
            if s.job is not None and s.job.cancelled:
                self._release(s)
        for job in [j for j in self._pending if j.cancelled]:
            self._pending.remove(job)
            self._end_job(job)

    def _admit(self) -> None:
        """Give waiting requests free slots, in arrival order; the first slot reuses the longest cached prefix."""
        while self._pending:
            job = self._pending[0]
            free = [s for s in self._slots if s.job is None]
            if len(free) < job.params.n:
                return
            self._pending.popleft()
            lcps = {id(s): _common_prefix(s.cached, job.prompt) for s in free}
            first = max(free, key=lambda s: (lcps[id(s)], -s.last_used))
            keep = min(lcps[id(first)], len(job.prompt) - 1)  # always evaluate >= 1 token
            if keep < len(first.cached):
                if not ll.llama_memory_seq_rm(self.mem, first.seq, keep, -1):
                    ll.llama_memory_seq_rm(self.mem, first.seq, -1, -1)
                    keep = 0
                first.cached = first.cached[:keep]
            others = sorted((s for s in free if s is not first), key=lambda s: s.last_used)[: job.params.n - 1]
            job.slots = [first, *others]
            for i, s in enumerate(job.slots):
                s.job = job
                s.choice = _Choice(i, job.samplers[i], TextStream(job.params.stop),
                                   matcher=job.matchers[i] if job.matchers else None)
                s.waiting = i > 0
                s.reading = i == 0
            job.active = len(job.slots)
            job.cached = keep
            self.stats.requests += 1
            self.stats.cached_tokens += keep

    def _plan(self) -> list[_Part]:
        parts: list[_Part] = []
        for s in self._slots:
            if s.choice is not None and s.choice.pending is not None:
                parts.append(_Part(s, [s.choice.pending], len(s.cached), output=True, prompt=False))
        budget = self.n_batch - len(parts)
        readers = sorted((s for s in self._slots if s.reading), key=lambda s: s.job.t_submit)  # type: ignore[union-attr]
        for s in readers:
            if budget <= 0:
                break
            job = s.job
            assert job is not None
            rest = job.prompt[len(s.cached):]
            chunk = rest[:budget]
            parts.append(_Part(s, chunk, len(s.cached), output=len(chunk) == len(rest), prompt=True))
            budget -= len(chunk)
        return parts

    def _fill(self, parts: list[_Part]) -> Batch:
        b = self._batch
        b.clear()
        for p in parts:
            if len(p.tokens) == 1:
                p.idx = b.add(p.tokens[0], p.pos0, p.slot.seq, p.output)
            else:
                p.idx = b.add_span(p.tokens, p.pos0, p.slot.seq, p.output)
        return b

    def _decode_or_raise(self, b: Batch) -> None:
        self.in_call_since = time.monotonic()
        try:
            ret = ll.llama_decode(self.ctx, b.struct())
        finally:
            self.in_call_since = None
        if ret != 0:
            raise EngineError(f"llama_decode failed ({ret})")

    def _decode_failed(self, parts: list[_Part], ret: int) -> None:
        """Isolate the failure: retry each request's tokens alone; fail only those that still fail."""
        self.stats.decode_failures += 1
        log.warning("runner %s: llama_decode returned %d for %d tokens; retrying per request",
                    self.model_id, ret, sum(len(p.tokens) for p in parts))
        for p in parts:  # drop whatever a partly processed batch left behind
            ll.llama_memory_seq_rm(self.mem, p.slot.seq, len(p.slot.cached), -1)
        by_job: dict[int, list[_Part]] = {}
        for p in parts:
            by_job.setdefault(id(p.slot.job), []).append(p)
        for jparts in by_job.values():
            job = jparts[0].slot.job
            b = self._fill(jparts)
            r = ll.llama_decode(self.ctx, b.struct())
            if r == 0:
                self._after(jparts)
                continue
            for p in jparts:
                ll.llama_memory_seq_rm(self.mem, p.slot.seq, len(p.slot.cached), -1)
            what = "no room in the KV cache" if r == 1 else f"llama_decode returned {r}"
            assert job is not None
            self._fail_job(job, EngineError(f"decoding failed for this request: {what}"))

    def _after(self, parts: list[_Part]) -> None:
        for p in parts:
            s = p.slot
            job = s.job
            if job is None or job.done:
                continue
            s.cached.extend(p.tokens)
            if p.prompt:
                self.stats.prompt_tokens_evaluated += len(p.tokens)
                job.evaluated += len(p.tokens)
                if p.output:
                    s.reading = False
                    self._prompt_read(s, p.idx)
            else:
                assert s.choice is not None
                s.choice.pending = None
                self._sample(s, p.idx)

    def _prompt_read(self, first: _Slot, idx: int) -> None:
        job = first.job
        assert job is not None
        for s in job.slots[1:]:
            # whole-sequence copy: a partial range between per-slot KV streams aborts llama.cpp
            ll.llama_memory_seq_rm(self.mem, s.seq, -1, -1)
            ll.llama_memory_seq_cp(self.mem, first.seq, s.seq, -1, -1)
            s.cached = list(first.cached)
            s.waiting = False
        for s in list(job.slots):
            if job.done:
                return
            self._sample(s, idx)

    def _sample(self, s: _Slot, idx: int) -> None:
        job, ch = s.job, s.choice
        assert job is not None and ch is not None
        if ch.matcher is not None and self._masks is not None and idx >= 0:
            if not self._masks.apply(s.seq, logits_row(self.ctx, idx, self.vocab.n_vocab)):
                self._fail_job(job, EngineError("the grammar allows no token here"))
                return
        try:
            if job.params.logprobs:  # logprobs read the context's row after the pick: stay here
                tok = ch.sampler.sample(self.ctx, idx)
            else:
                first = ch.sampler.first_pass(self.ctx, idx)
                if first is None:  # refused by the grammar: resample while the others decode
                    ch.deferred = ch.sampler.start_resample(self._resample_pool())
                    ch.deferred.add_done_callback(self._wake)
                    return
                tok = first
        except EngineError as e:
            self._fail_job(job, e)
            return
        self._emit(s, tok, idx)

    def _resample_pool(self) -> Executor:
        if self._resampler is None:
            self._resampler = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"grammar-{self.model_id}")
        return self._resampler

    def _collect_resamples(self) -> None:
        """Emit the tokens of finished grammar resamples, so those slots rejoin this step's batch.
        When nothing else could be decoded meanwhile, wait for one (or for new work)."""
        waiting = [s for s in self._slots if s.choice is not None and s.choice.deferred is not None]
        if not waiting:
            return
        if not any(s.reading or (s.choice is not None and s.choice.pending is not None) for s in self._slots):
            with self._cond:
                while not (self._closed or self._pending or self._tasks or self._any_cancelled()
                           or any(s.choice is None or s.choice.deferred is None or s.choice.deferred.done()
                                  for s in waiting)):
                    self._cond.wait()
        for s in waiting:
            ch, job = s.choice, s.job
            if ch is None or job is None or ch.deferred is None or not ch.deferred.done():
                continue  # still running, or its job failed meanwhile (n > 1)
            fut, ch.deferred = ch.deferred, None
            try:
                tok = fut.result()
            except EngineError as e:
                self._fail_job(job, e)
                continue
            self._emit(s, tok, -1)

    def _any_cancelled(self) -> bool:
        return any(s.job is not None and s.job.cancelled for s in self._slots)

    def _wake(self, _: object = None) -> None:
        with self._cond:
            self._cond.notify_all()

    def _emit(self, s: _Slot, tok: int, idx: int) -> None:
        """Deliver a picked token: text, stops, length; `idx` is its row for logprobs (or -1)."""
        job, ch = s.job, s.choice
        assert job is not None and ch is not None
        now = time.monotonic()
        if job.t_first is None:
            job.t_first = now
        job.t_last = now
        ch.generated += 1
        job.completion += 1
        self.stats.tokens_generated += 1
        p = job.params
        logprobs: list[TokenLogprob] = []
        finish = None
        if self.vocab.is_eog(tok) and not p.ignore_eos:
            text = ch.text.flush()
            finish = "stop"
        elif ch.matcher is not None and not ch.matcher.consume_token(tok):
            self._fail_job(job, EngineError(f"the grammar refused a token: {ch.matcher.get_error()}"))
            return
        else:
            piece = self.vocab.piece(tok)
            if p.logprobs:
                logprobs.append(self._logprob(idx, tok, piece, p.top_logprobs))
            text = ch.text.feed(piece)
            if ch.text.stopped:
                finish = "stop"
            elif ch.generated >= job.max_tokens:
                text += ch.text.flush()
                finish = "length"
            else:
                ch.pending = tok
        job.out.append(Delta(ch.index, text, logprobs, finish, (tok,)))
        if finish is not None:
            self._release(s)

    def _logprob(self, idx: int, tok: int, piece: bytes, top_n: int) -> TokenLogprob:
        r = row_logprobs(self.ctx, idx, self.vocab.n_vocab, tok, top_n)
        top = []
        for t, lp in r.top:
            pc = self.vocab.piece(t)
            top.append(TopLogprob(pc.decode("utf-8", errors="replace"), lp, list(pc)))
        return TokenLogprob(piece.decode("utf-8", errors="replace"), r.logprob, list(piece), top)

    # --- releasing -------------------------------------------------------------------------------

    def _release(self, s: _Slot) -> None:
        """Free a slot; its KV (exactly `s.cached`) stays for prefix reuse."""
        job, ch = s.job, s.choice
        s.job = s.choice = None
        s.reading = s.waiting = False
        s.last_used = time.monotonic()
        if ch is not None:
            ch.sampler.free()
        if job is not None:
            job.active -= 1
            if job.active == 0:
                self._end_job(job)

    def _usage(self, job: _Job) -> Usage:
        u = Usage(prompt_tokens=len(job.prompt), completion_tokens=job.completion,
                  cached_tokens=job.cached, prompt_eval_tokens=job.evaluated)
        if job.t_first is not None:
            u.ttft_s = job.t_first - job.t_submit
            if job.t_last is not None and job.completion > job.params.n and job.t_last > job.t_first:
                u.decode_tokens_per_s = (job.completion - job.params.n) / (job.t_last - job.t_first)
        return u

    def _end_job(self, job: _Job) -> None:
        if job.done:
            return
        job.done = True
        for smp in job.samplers:
            smp.free()  # idempotent: already freed for released slots
        job.out.append(self._usage(job))
        job.out.append(_END)
        self._send(job)

    def _fail_job(self, job: _Job, exc: BaseException) -> None:
        if job.done:
            return
        for s in list(job.slots):
            if s.job is job:
                s.job = s.choice = None
                s.reading = s.waiting = False
                s.last_used = time.monotonic()
        job.done = True
        for smp in job.samplers:
            smp.free()
        job.out.append(self._usage(job))
        job.out.append(exc)
        self._send(job)

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            jobs = [s.job for s in self._slots if s.job is not None] + list(self._pending)
            self._pending.clear()
        for job in jobs:
            if job is not None:
                self._fail_job(job, exc)
        self._flush()

    def _send(self, job: _Job) -> None:
        """Queue the job's items for the next flush (one delivery per step for all jobs)."""
        if job.out and not job.queued:
            job.queued = True
            self._outbox.append(job)

    def _flush(self) -> None:
        for s in self._slots:
            if s.job is not None:
                self._send(s.job)
        if not self._outbox:
            return
        batch: list[tuple[Generation, list[object]]] = []
        for job in self._outbox:
            job.queued = False
            if job.out:
                batch.append((job.gen, job.out))
                job.out = []
        self._outbox.clear()
        post_many(batch)

    # --- shutdown ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the thread, fail what is still running, free llama.cpp's objects; idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        self._fail_all(EngineError("the model was unloaded"))
        with self._cond:
            tasks = list(self._tasks)
            self._tasks.clear()
        for t in tasks:  # let waiters (warmup, embed) see the error instead of hanging
            t.fail(EngineError("the model was unloaded"))
        if self._masks is not None:
            self._masks.close()
        if self._resampler is not None and self._own_resampler:
            self._resampler.shutdown(wait=True)  # samplers are freed above, after their resample
        if self.ctx:
            ll.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            ll.llama_model_free(self.model)
            self.model = None

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


