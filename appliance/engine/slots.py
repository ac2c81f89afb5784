"""The slot table: which request holds which of a context's `parallel` KV streams.

A slot is one sequence of the llama context (its own KV stream). It remembers the tokens
whose KV it holds (`cached`), also after its request ends, so a later request sharing a
prefix reads only the rest. Admission hands waiting requests free slots in arrival order,
the first one (which reads the prompt) the free slot with the longest cached prefix; the
others (n > 1) get the least recently used and receive a copy of the prompt's KV later.

Nothing here calls llama.cpp: dropping the KV past the reused prefix goes through the
injected `trim(seq, keep) -> bool`, so the table is testable on its own. Used on the
runner's thread only (the runner appends to `pending` under its lock).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from .generation import Generation
from .textout import TextStream
from .types import SamplingParams

if TYPE_CHECKING:
    from .sampling import SlotSampler
    from .vision import VisionPrompt


@dataclass(eq=False)
class Choice:
    """One of a request's n outputs, generated in its own slot."""

    index: int
    sampler: SlotSampler
    text: TextStream
    generated: int = 0
    pending: int | None = None  # sampled, not yet decoded
    matcher: Any = None  # llguidance matcher of a constrained choice (engine/guidance.py)
    # logprobs of tokens whose text the TextStream still holds (a possible stop string, part
    # of a character): they go out with that text, or are dropped with a stop string
    held_logprobs: list[Any] = field(default_factory=list)


@dataclass(eq=False)
class Job:
    """One request from submission to its last item (deltas, usage, end or error)."""

    gen: Generation
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    samplers: list[SlotSampler]
    t_submit: float
    cancelled: bool = False
    done: bool = False
    slots: list[Slot] = field(default_factory=list)
    active: int = 0  # slots still held
    cached: int = 0  # prompt tokens reused from the first slot's cache
    evaluated: int = 0  # prompt tokens decoded
    completion: int = 0  # tokens generated, all choices
    t_first: float | None = None
    t_admit: float | None = None  # in a slot (t_submit .. t_admit: waiting for a slot or a step)
    steps_at: tuple[int, int] = (0, 0)  # the runner's step count when submitted, when admitted
    t_last: float | None = None
    out: list[object] = field(default_factory=list)  # items for the consumer, sent once per step
    queued: bool = False  # in the runner's outbox for this step's delivery
    matchers: list[Any] = field(default_factory=list)  # one per choice when constrained
    preserved: frozenset[int] = frozenset()  # special tokens whose text goes out (params.preserved)
    vision: VisionPrompt | None = None  # the prompt's images (their pseudo-ids are in `prompt`)


@dataclass(eq=False)
class Slot:
    """One KV stream; `seq` is its llama.cpp sequence id (and its index in the table)."""

    seq: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV sits at positions 0..len-1
    job: Job | None = None
    choice: Choice | None = None
    reading: bool = False  # reading the prompt (the first slot of a job)
    waiting: bool = False  # n > 1: waiting for the first slot to finish the prompt
    last_used: float = 0.0

    # --- what the step planner reads (step.SlotState) -------------------------------------

    @property
    def n_cached(self) -> int:
        return len(self.cached)

    @property
    def next_token(self) -> int | None:
        """The sampled token to decode in the next step, if any."""
        return self.choice.pending if self.choice is not None else None

    @property
    def unread(self) -> Sequence[int]:
        """Prompt tokens still to decode (empty unless this slot reads its job's prompt)."""
        if not self.reading or self.job is None:
            return ()
        return self.job.prompt[len(self.cached):]

    @property
    def submitted(self) -> float:
        return self.job.t_submit if self.job is not None else 0.0

    @property
    def image_len(self) -> int:
        span = self.job.vision.image_at(len(self.cached)) if self.job and self.job.vision else None
        return span.length if span else 0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n], dtype=np.int32) != np.asarray(b[:n], dtype=np.int32)
    i = int(np.argmax(x))
    return n if not x[i] else i


class SlotTable:
    """The slots of one context and the requests waiting for them."""

    def __init__(self, n: int, trim: Callable[[int, int], bool],
                 now: Callable[[], float] = time.monotonic) -> None:
        """`trim(seq, keep)` drops a sequence's KV from position `keep` on (all of it for -1);
        it returns False when llama.cpp refused."""
        self.slots = [Slot(seq=i) for i in range(n)]
        self.pending: deque[Job] = deque()
        self._trim = trim
        self._now = now

    @property
    def busy(self) -> int:
        return sum(1 for s in self.slots if s.job is not None)

    def free(self) -> list[Slot]:
        return [s for s in self.slots if s.job is None]

    def held(self) -> Iterator[Slot]:
        return (s for s in self.slots if s.job is not None)

    def admit(self) -> list[Job]:
        """Give waiting requests free slots, strictly in arrival order (a request needing more
        slots than are free blocks the ones behind it); return the requests admitted."""
        admitted: list[Job] = []
        while self.pending:
            job = self.pending[0]
            free = self.free()
            if len(free) < job.params.n:
                break
            self.pending.popleft()
            lcps = {s.seq: common_prefix(s.cached, job.prompt) for s in free}
            first = max(free, key=lambda s: (lcps[s.seq], -s.last_used))
            keep = min(lcps[first.seq], len(job.prompt) - 1)  # always evaluate >= 1 token
            if job.vision:
                keep = job.vision.boundary(keep)  # never into the middle of an image
            if keep < len(first.cached):  # the KV from `keep`'s position on (M-RoPE: fewer than tokens)
                if not self._trim(first.seq, job.vision.position(keep) if job.vision else keep):
                    self._trim(first.seq, -1)  # a partial removal was refused: drop it all
                    keep = 0
                first.cached = first.cached[:keep]
            others = sorted((s for s in free if s is not first), key=lambda s: s.last_used)[: job.params.n - 1]
            job.slots = [first, *others]
            for i, s in enumerate(job.slots):
                s.job = job
                s.waiting = i > 0
                s.reading = i == 0
            job.active = len(job.slots)
            job.cached = keep
            admitted.append(job)
        return admitted

    def release(self, s: Slot) -> Job | None:
        """Free a slot, keeping its KV (exactly `s.cached`) for prefix reuse. Returns its job
        when that was the job's last slot (the job is then over)."""
        job = s.job
        self._clear(s)
        if job is None:
            return None
        job.active -= 1
        return job if job.active == 0 else None

    def detach(self, job: Job) -> None:
        """Free every slot a failed job still holds."""
        for s in job.slots:
            if s.job is job:
                self._clear(s)

    def _clear(self, s: Slot) -> None:
        s.job = s.choice = None
        s.reading = s.waiting = False
        s.last_used = self._now()
