"""One loaded model: llama.cpp model + context with one KV stream per slot, decoded by one thread.

Continuous batching: each step puts every generating slot's next token plus chunks of
prompts still being read into ONE `llama_batch` and calls `llama_decode` once (ctypes
releases the GIL, so the event loop keeps serving). Each choice is sampled by its own
sampler chain from its output row. A long prompt is read in chunks so it never stalls the
slots that are generating.

A step reads: admit (slots.SlotTable) -> plan (step.plan_step, pure) -> decode -> sample
(sampling.SlotSampler) -> emit (output.OutputProcessor). Request checks are in validate.py,
embeddings in embeddings.py. This module owns the thread, the llama.cpp objects and the
hand-off of each step's deltas to the event loop.

Everything that touches the llama context runs on the runner's thread; the asyncio side
only tokenizes (read-only vocabulary), validates, and queues requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, TypeVar

import llama_cpp as ll

from ..config import ModelConfig
from ..errors import ApplianceError, EngineError, InvalidRequest, WorkerLost
from . import llamalog
from .batch import Batch
from .chat import ChatPrompt, render_chat
from .cpufeatures import extra_buffers_safe
from .embeddings import embed_batches, embedding_inputs
from .fim import fim_prompt
from .generation import _END, Generation, post_many
from .output import OutputProcessor, usage
from .guidance import StepMasks, logits_row, specials_of
from .params import N_BATCH, context_params, model_params
from .promptscore import score_tokens
from .sampling import (Resident, RowLogprobs, SlotSampler, random_seed, row_logprobs,
                       use_backend_sampling)
from .slots import Choice, Job, Slot, SlotTable
from .step import Part, StepPlan, plan_step
from .textout import TextStream
from .types import EmbeddingResult, GenerationRequest, TokenLogprob
from .validate import check_ids, check_params, check_length, max_new_tokens, prompt_tokens
from .vision import Projector, VisionPrompt
from .vocab import Vocab

log = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_N_BATCH = N_BATCH
ARRIVAL_WAIT_S = 0.02  # at most this long for the event loop before an idle runner's first step


@dataclass
class RunnerStats:
    """Counters since load (read from any thread; written by the runner's thread)."""

    requests: int = 0
    prompt_tokens_evaluated: int = 0
    cached_tokens: int = 0
    tokens_generated: int = 0
    steps: int = 0
    decode_failures: int = 0


@dataclass(frozen=True)
class _Task:
    """Work that must run on the runner's thread (warm-up, embeddings), with its failure path."""

    run: Callable[[], None]
    fail: Callable[[BaseException], None]


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
        arrival_wait_s: float = ARRIVAL_WAIT_S,
        mmproj: Path | None = None,
        workers: Sequence[str] = (),
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

        mp = model_params(n_gpu_layers=n_gpu_layers, main_gpu=main_gpu, split_mode=split_mode,
                          extra_buffers=extra_buffers_safe() if extra_buffers is None else extra_buffers,
                          workers=workers)
        self.workers = tuple(workers)
        with llamalog.capture() as chunks:
            self.model = ll.llama_model_load_from_file(str(paths[0]).encode(), mp)
            if not self.model:
                raise EngineError(f"llama.cpp could not load {paths[0]}")
            self.vocab = Vocab(self.model, Vocab.file_key(paths[0]))
            self.arch = self.vocab.meta("general.architecture") or ""
            cp = context_params(cfg, threads=threads, n_batch=n_batch,
                                declares_pooling=self.vocab.meta(f"{self.arch}.pooling_type") is not None)
            self.ctx = ll.llama_init_from_model(self.model, cp)
            if not self.ctx:
                ll.llama_model_free(self.model)
                self.model = None
                raise EngineError(f"llama.cpp could not create a context for {paths[0]} "
                                  f"(n_ctx={cp.n_ctx}, n_seq_max={cp.n_seq_max})")
            self.projector = self._load_projector(mmproj, use_gpu=n_gpu_layers != 0, threads=threads)
        self.load_log = llamalog.join_lines(chunks)
        self.buffers = llamalog.parse_buffer_sizes(self.load_log)
        self.n_batch = int(cp.n_batch)
        self.n_embd = ll.llama_model_n_embd(self.model)
        self.model_bytes = int(ll.llama_model_size(self.model))
        self.context_bytes = self.buffers.total("KV", "RS", "compute", "output")
        # the decode thread's handle: valid until close() frees it, after the thread stopped
        self._ctx: ll.llama_context_p = self.ctx
        self.mem = ll.llama_get_memory(self.ctx)
        self.backend_sampling = not self.embedding and use_backend_sampling(cfg.backend_sampling, n_gpu_layers)
        self._resident: dict[int, Resident] = {}  # seq -> chain a finished request left in the graph
        self._batch = Batch(self.n_batch)
        self._table = SlotTable(self.parallel, self._trim)
        self._slots = self._table.slots
        self._pending = self._table.pending
        self._output = OutputProcessor(self.vocab, self._row_logprobs)
        self._tasks: deque[_Task] = deque()
        self._outbox: list[Job] = []  # jobs with items to deliver at the end of this step
        self._masks: StepMasks | None = None  # llguidance masks (made on first constrained step)
        self._arrival_wait_s = arrival_wait_s
        self._cond = threading.Condition()
        self._abandoned = False  # a worker was lost mid-call: the decode thread never returns
        self._running_task: _Task | None = None  # warm-up or embeddings, on the decode thread
        self._unwatch: Callable[[], None] | None = None
        if self.workers:
            from ..hardware.rpc import watch

            self._unwatch = watch(self._on_worker_lost)
        self._thread = threading.Thread(target=self._run, name=f"runner-{model_id or 'model'}", daemon=True)
        self._thread.start()

    # --- properties for the scheduler -------------------------------------------------------

    @property
    def n_slots(self) -> int:
        return self.parallel

    @property
    def busy_slots(self) -> int:
        return self._table.busy

    @property
    def queued(self) -> int:
        """Requests accepted but not yet in a slot."""
        return len(self._pending)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def lost(self) -> bool:
        """An RPC worker of this model died mid-call: it serves nothing more (unload it)."""
        return self._abandoned

    @property
    def chat_template(self) -> str | None:
        return self.cfg.chat_template or self.vocab.chat_template

    @property
    def reasoning(self) -> Literal["separate", "inline"]:
        return self.cfg.reasoning

    @property
    def tool_use_template(self) -> str | None:
        """The GGUF's tool_use variant, unless the catalog overrides the template."""
        return None if self.cfg.chat_template else self.vocab.tool_use_template

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
        check_ids(tokens, self.vocab.n_vocab, "tokens")
        return self.vocab.detokenize(tokens, special)

    def piece(self, token: int) -> bytes:
        """The bytes one generated token adds to the output text."""
        return self.vocab.piece(token)

    def fim_prompt(self, prefix: str, suffix: str, middle: str = "",
                   extra: Sequence[tuple[str, str]] = (), param: str = "suffix") -> list[int]:
        """Fill-in-the-middle prompt tokens (engine/fim.py); 400 when the vocabulary has no FIM tokens."""
        return fim_prompt(self.vocab, self.model_id, prefix, suffix, middle, extra, param=param)

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
        jobs: list[Job] = []
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

    def _load_projector(self, mmproj: Path | None, *, use_gpu: bool, threads: int) -> Projector | None:
        if mmproj is None or self.model is None:
            return None
        try:
            return Projector(mmproj, self.model, use_gpu=use_gpu, n_threads=threads)
        except BaseException:
            ll.llama_free(self.ctx)
            ll.llama_model_free(self.model)
            self.ctx = self.model = None
            raise

    def tokenize_images(self, text: str, images: list[bytes], add_special: bool) -> VisionPrompt:
        if self.projector is None:
            raise InvalidRequest(f"model {self.model_id!r} does not take images (it has no mmproj projector)",
                                 param="messages")
        return self.projector.tokenize(text, images, add_special=add_special)

    def _prepare(self, req: GenerationRequest) -> Job:
        if self.embedding:
            raise InvalidRequest(f"model {self.model_id!r} is an embedding model", param="model")
        p = req.params
        check_params(p, parallel=self.parallel, n_vocab=self.vocab.n_vocab)
        vision = req.vision
        if vision is None and req.images and isinstance(req.prompt, str):
            vision = self.tokenize_images(req.prompt, list(req.images), req.add_special)
        elif vision is None and req.images:
            raise InvalidRequest("images need a text prompt with one image marker each", param="prompt")
        if vision is not None:
            prompt = check_length(vision.tokens, self.context)
            if prompt[-1] < 0:
                raise InvalidRequest("the prompt must not end with an image", param="messages")
        else:
            prompt = prompt_tokens(self.vocab, req, self.context)
        max_tokens = max_new_tokens(p, len(prompt), self.context)
        base_seed = p.seed if p.seed is not None else random_seed()
        samplers: list[SlotSampler] = []
        try:
            for i in range(p.n):
                samplers.append(SlotSampler(self.vocab.vocab, self.vocab.n_vocab, p, base_seed + i,
                                            self.vocab.eog_ids, n_ctx=self.context))
        except BaseException:
            for smp in samplers:
                smp.free()
            raise
        loop = asyncio.get_running_loop()
        job: Job
        gen = Generation(loop, p.n, lambda: self._cancel(job), req.request_id)
        gen.delivered.prompt_tokens = len(prompt)
        job = Job(gen=gen, prompt=prompt, params=p, max_tokens=max_tokens, samplers=samplers,
                  t_submit=time.monotonic(), steps_at=(self.stats.steps, 0), preserved=self.vocab.special_ids(p.preserved), vision=vision,
                  matchers=p.constraint.fork(p.n) if p.constraint is not None else [])  # type: ignore[attr-defined]
        return job

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        **options: Any,
    ) -> ChatPrompt:
        """Render messages with this model's template (catalog's, GGUF's, or the default);
        `options`: render_chat's keywords (template_kwargs, parallel_tool_calls, reasoning)."""
        options.setdefault("reasoning", self.reasoning)
        if tools:
            options.setdefault("specials", specials_of(self.vocab))
        return render_chat(self.chat_template, messages, tools, tool_choice,
                           bos=self.bos_text, eos=self.eos_text, arch=self.arch,
                           tool_use_template=self.tool_use_template, **options)

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError("the model was unloaded")
        if isinstance(self._broken, ApplianceError):
            raise self._broken
        if self._broken is not None:
            raise EngineError(f"the model's decoder stopped: {self._broken}")

    def _cancel(self, job: Job) -> None:
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
        token_lists = embedding_inputs(self.vocab, inputs, self.context)
        gone = threading.Event()
        try:
            vectors = await self._call(lambda: embed_batches(
                self._ctx, self._batch, token_lists, max_seqs=self.parallel, n_embd=self.n_embd,
                decode=self._decode_prompts, stop=gone.is_set))
        except asyncio.CancelledError:
            gone.set()  # the runner's thread stops at the next batch
            raise
        return EmbeddingResult(vectors=vectors, prompt_tokens=sum(map(len, token_lists)))

    def _decode_prompts(self, b: Batch) -> None:
        self._decode_or_raise(b)
        self.stats.prompt_tokens_evaluated += b.n

    # --- prompt logprobs -----------------------------------------------------------------------

    async def prompt_logprobs(self, prompt: str | list[int], top_n: int = 0,
                              add_special: bool = True) -> list[TokenLogprob]:
        """Each prompt token's logprob given the ones before it (engine/promptscore.py)."""
        self._check_open()
        tokens = prompt_tokens(self.vocab, GenerationRequest(prompt, add_special=add_special), self.context + 1)

        def run() -> list[TokenLogprob]:
            free = [s for s in self._slots if s.job is None]
            if not free:
                raise EngineError("no free slot to score the prompt in")
            s = free[-1]
            s.cached = []
            ll.llama_memory_seq_rm(self.mem, s.seq, -1, -1)
            try:
                # one logits row per sequence a decode (params.py: n_outputs_max_per_seq = 1)
                return score_tokens(tokens, seq=s.seq, batch=self._batch, max_rows=1,
                                    decode=self._decode_prompts, logprob=self._output.logprob,
                                    piece=self.vocab.piece, top_n=top_n)
            finally:
                ll.llama_memory_seq_rm(self.mem, s.seq, -1, -1)

        return await self._call(run)

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

    async def _call(self, fn: Callable[[], _T]) -> _T:
        """Run `fn` on the runner's thread (it owns the context) and await its result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_T] = loop.create_future()

        def ok(res: _T) -> None:  # on the loop
            if not fut.done():
                fut.set_result(res)

        def err(e: BaseException) -> None:  # on the loop
            if not fut.done():
                fut.set_exception(e)

        def task() -> None:
            try:
                res = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting caller
                loop.call_soon_threadsafe(err, e)
            else:
                loop.call_soon_threadsafe(ok, res)

        def fail(e: BaseException) -> None:
            loop.call_soon_threadsafe(err, e)

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
                with llamalog.quiet():  # llama.cpp's per-step log lines stay in C
                    for t in tasks:
                        self.in_call_since = time.monotonic()
                        self._running_task = t
                        t.run()
                        self._running_task = None
                        self.in_call_since = None
                        self.last_progress = time.monotonic()
                    self._step()
        except BaseException as e:  # a bug or a llama.cpp failure: fail everyone, stop serving
            log.exception("runner %s: decode loop failed", self.model_id)
            self._broken = e
            self._fail_all(EngineError(f"the model's decoder stopped: {e}"))

    def _step(self) -> None:
        """One step: admit, plan, decode, sample, emit; deliver every stream's items once."""
        with self._cond:
            self._drop_cancelled()
            loop = self._pending[0].gen._loop if self._pending and not self.busy_slots else None
        if loop is not None:
            self._let_arrivals_queue(loop)
        with self._cond:
            self._admit()
        plan = plan_step(self._slots, self.n_batch)
        if not plan:
            self._flush()  # cancelled jobs' ends
            return
        self.in_call_since = time.monotonic()
        for img in plan.images:
            self._read_image(img)
        if plan.parts:
            batch = self._fill(plan)
            self._start_masks(plan)  # constrained streams' masks, computed while the batch decodes
            ret = ll.llama_decode(self._ctx, batch.struct())
            if self._masks is not None:
                self._masks.wait()
            if ret == 0:
                self._after(plan)
            else:
                self._decode_failed(plan, ret)
        self.in_call_since = None
        self.stats.steps += 1
        self.last_progress = time.monotonic()
        self._flush()

    def _start_masks(self, plan: StepPlan) -> None:
        items = []
        for p in plan.parts:
            job = self._slots[p.seq].job
            if not p.output or job is None:
                continue
            slots = job.slots if p.prompt else [self._slots[p.seq]]  # a prompt's row serves all its choices
            items += [(s.choice.matcher, s.seq) for s in slots if s.choice is not None and s.choice.matcher is not None]
        if items:
            if self._masks is None:
                self._masks = StepMasks(self.parallel, self.vocab.n_vocab)
            self._masks.start(items)

    def _let_arrivals_queue(self, loop: asyncio.AbstractEventLoop) -> None:
        """Idle, woken by a request: let the event loop finish what it is running before the
        first step. Requests that arrive together (clients released by the same step) are
        handled in the same loop iterations; without this the first one starts a prompt step
        alone and the others wait a whole step for theirs. One loop round trip, bounded.
        (Waiting for as many requests as the last step released was tried: no gain in TTFT
        on the CPU or on an H200 at 1-32 clients, docs/engine.md.)"""
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
        """Waiting requests into free slots (slots.SlotTable.admit); each slot gets its choice."""
        for job in self._table.admit():
            job.t_admit, job.steps_at = time.monotonic(), (job.steps_at[0], self.stats.steps)
            for i, s in enumerate(job.slots):
                s.choice = Choice(i, job.samplers[i], TextStream(job.params.stop),
                                  matcher=job.matchers[i] if job.matchers else None)
                resident = self._resident.pop(s.seq, None)
                if self.backend_sampling and job.params.n == 1 and not job.matchers:  # n > 1: from the first token on (_emit)
                    job.samplers[i].attach(self._ctx, s.seq, resident)
                elif resident is not None:
                    resident.free()
            self.stats.requests += 1
            self.stats.cached_tokens += job.cached

    def _trim(self, seq: int, keep: int) -> bool:
        """Drop a slot's KV from position `keep` on (-1: all of it)."""
        return bool(ll.llama_memory_seq_rm(self.mem, seq, keep, -1))

    def _pos(self, seq: int, index: int) -> int:
        """The KV position of a slot's token at `index`: the plan counts tokens, an image
        can take fewer positions than tokens (M-RoPE, vision.VisionPrompt.position)."""
        job = self._slots[seq].job
        return job.vision.position(index) if job is not None and job.vision is not None else index

    def _fill(self, plan: StepPlan) -> Batch:
        b = self._batch
        b.clear()
        for p in plan.parts:
            if len(p.tokens) == 1:
                b.add(p.tokens[0], self._pos(p.seq, p.pos0), p.seq, p.output)
            else:
                b.add_span(p.tokens, self._pos(p.seq, p.pos0), p.seq, p.output)
        return b

    def _decode_or_raise(self, b: Batch) -> None:
        self.in_call_since = time.monotonic()
        try:
            ret = ll.llama_decode(self._ctx, b.struct())
        finally:
            self.in_call_since = None
        if ret != 0:
            raise EngineError(f"llama_decode failed ({ret})")

    def _decode_failed(self, plan: StepPlan, ret: int) -> None:
        """Isolate the failure: retry each request's tokens alone; fail only those that still fail."""
        self.stats.decode_failures += 1
        log.warning("runner %s: llama_decode returned %d for %d tokens; retrying per request",
                    self.model_id, ret, plan.n_tokens)
        for p in plan.parts:  # drop whatever a partly processed batch left behind
            ll.llama_memory_seq_rm(self.mem, p.seq, self._pos(p.seq, len(self._slots[p.seq].cached)), -1)
        by_job: dict[int, list[int]] = {}
        for p in plan.parts:
            by_job.setdefault(id(self._slots[p.seq].job), []).append(p.seq)
        for seqs in by_job.values():
            job = self._slots[seqs[0]].job
            alone = plan.only(seqs)
            r = ll.llama_decode(self._ctx, self._fill(alone).struct())
            if r == 0:
                self._after(alone)
                continue
            for seq in seqs:
                ll.llama_memory_seq_rm(self.mem, seq, self._pos(seq, len(self._slots[seq].cached)), -1)
            what = "no room in the KV cache" if r == 1 else f"llama_decode returned {r}"
            assert job is not None
            self._fail_job(job, EngineError(f"decoding failed for this request: {what}"))

    def _after(self, plan: StepPlan) -> None:
        """The batch is decoded: extend the slots' caches, sample where the plan has outputs."""
        # wait for the device here, GIL released: in-graph chains' tokens are then read
        # without a GIL hand-off each (sampling.SlotSampler.sample)
        ll.llama_synchronize(self._ctx)
        for p in plan.parts:
            s = self._slots[p.seq]
            job = s.job
            if job is None or job.done:
                continue
            s.cached.extend(p.tokens)
            if p.prompt:
                self.stats.prompt_tokens_evaluated += len(p.tokens)
                job.evaluated += len(p.tokens)
                if p.output:
                    s.reading = False
                    self._prompt_read(s, p.row)
            else:
                assert s.choice is not None
                s.choice.pending = None
                self._sample(s, p.row)

    def _read_image(self, p: Part) -> None:
        """Encode one image of a prompt and evaluate it into the slot (its own decode: the
        batch holds token ids, an image is embeddings)."""
        s = self._slots[p.seq]
        job = s.job
        span = job.vision.image_at(p.pos0) if job and job.vision else None
        if job is None or job.done or span is None or self.projector is None:
            return
        try:
            self.projector.decode(self._ctx, span, self._pos(p.seq, p.pos0), p.seq, self.n_batch)
        except EngineError as e:
            ll.llama_memory_seq_rm(self.mem, p.seq, self._pos(p.seq, len(s.cached)), -1)
            self._fail_job(job, e)
            return
        s.cached.extend(p.tokens)
        self.stats.prompt_tokens_evaluated += len(p.tokens)
        job.evaluated += len(p.tokens)

    def _prompt_read(self, first: Slot, idx: int) -> None:
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

    def _sample(self, s: Slot, idx: int) -> None:
        job, ch = s.job, s.choice
        assert job is not None and ch is not None
        if ch.matcher is not None and self._masks is not None and idx >= 0:
            if not self._masks.apply(s.seq, logits_row(self._ctx, idx, self.vocab.n_vocab)):
                self._fail_job(job, EngineError("the grammar allows no token here"))
                return
        self._emit(s, ch.sampler.sample(self._ctx, idx, keep_gil=not self.workers), idx)

    def _emit(self, s: Slot, tok: int, idx: int) -> None:
        """Deliver a picked token (output.OutputProcessor); `idx` is its row for logprobs (or -1)."""
        job, ch = s.job, s.choice
        assert job is not None and ch is not None
        if ch.matcher is not None and not self.vocab.is_eog(tok) and not ch.matcher.consume_token(tok):
            self._fail_job(job, EngineError(f"the grammar refused a token: {ch.matcher.get_error()}"))
            return
        first = job.t_first is None
        delta = self._output.token(job, ch, tok, idx, time.monotonic())
        if first and log.isEnabledFor(logging.DEBUG):
            self._log_first_token(job)
        self.stats.tokens_generated += 1
        job.out.append(delta)
        if delta.finish_reason is not None:
            self._release(s)
        else:
            ch.pending = tok
            if self.backend_sampling and ch.matcher is None:  # a grammar's mask needs the row on the host
                ch.sampler.attach(self._ctx, s.seq)  # the next tokens are drawn in the graph

    def _log_first_token(self, job: Job) -> None:
        """Where a request's time to its first token went inside the engine (docs/engine.md,
        "Time to first token"): waiting for a slot or for the running step to end, then its
        prompt's steps. Steps are counted at their end, so 1 step to admission means the
        request came while a step ran."""
        assert job.t_first is not None and job.t_admit is not None
        submitted, admitted = job.steps_at
        log.debug("runner %s: request %s first token %.1f ms after queued: admitted after %.1f ms (%d steps), "
                  "prompt of %d tokens read in %.1f ms (%d steps)", self.model_id, job.gen.request_id,
                  1e3 * (job.t_first - job.t_submit), 1e3 * (job.t_admit - job.t_submit), admitted - submitted,
                  len(job.prompt) - job.cached, 1e3 * (job.t_first - job.t_admit), self.stats.steps - admitted + 1)

    def _row_logprobs(self, idx: int, tok: int, top_n: int) -> RowLogprobs:
        return row_logprobs(self._ctx, idx, self.vocab.n_vocab, tok, top_n)

    # --- releasing -------------------------------------------------------------------------------

    def _release(self, s: Slot) -> None:
        """Free a slot; its KV (exactly `s.cached`) stays for prefix reuse."""
        ch = s.choice
        ended = self._table.release(s)
        if ch is not None:
            parked = ch.sampler.park() if self.backend_sampling else None
            if parked is not None:  # stays in the graph for the slot's next request
                self._resident[s.seq] = parked
            ch.sampler.free()
        if ended is not None:
            self._end_job(ended)

    def _end_job(self, job: Job) -> None:
        if job.done:
            return
        job.done = True
        for smp in job.samplers:
            smp.free()  # idempotent: already freed for released slots
        job.out.append(usage(job))
        job.out.append(_END)
        self._send(job)

    def _fail_job(self, job: Job, exc: BaseException) -> None:
        if job.done:
            return
        self._table.detach(job)
        job.done = True
        for smp in job.samplers:
            smp.free()
        job.out.append(usage(job))
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

    def _send(self, job: Job) -> None:
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

    def _on_worker_lost(self, message: str) -> None:
        """hardware/rpc.py: an RPC worker died mid-call (on llama.cpp's client thread). If it
        is one of ours, our decode thread waits inside llama.cpp for good: fail every
        request now, and leave the llama.cpp objects to it (freeing them under it would crash)."""
        from ..hardware.rpc import lost_worker, mark_lost

        gone = lost_worker(self.workers)
        if gone is None:
            return
        mark_lost(gone)
        err = WorkerLost(gone, self.model_id)
        self._broken = err
        self._abandoned = True
        self.in_call_since = None  # the watchdog must not hold the daemon's health on it
        if self._thread.ident is not None:  # its step never ends: the process must log again
            llamalog.release(self._thread.ident)
        task = self._running_task
        if task is not None:  # its waiter (a load's warm-up, an embeddings request) gets the error
            task.fail(err)
        self._fail_all(err)

    def close(self) -> None:
        """Stop the thread, fail what is still running, free llama.cpp's objects; idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._unwatch is not None:
            self._unwatch()
        if threading.current_thread() is not self._thread and not self._abandoned:
            self._thread.join()
        self._fail_all(EngineError("the model was unloaded"))
        with self._cond:
            tasks = list(self._tasks)
            self._tasks.clear()
        for t in tasks:  # let waiters (warmup, embed) see the error instead of hanging
            t.fail(EngineError("the model was unloaded"))
        if self._abandoned:
            log.error("runner %s: abandoned after losing an RPC worker; its memory stays allocated "
                      "until the daemon restarts", self.model_id)
            return
        if self._masks is not None:
            self._masks.close()
        for r in self._resident.values():  # out of the graph before the context goes
            r.free()
        self._resident.clear()
        if self.projector is not None:
            self.projector.close()
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


