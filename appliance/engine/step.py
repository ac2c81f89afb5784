"""What one decode step does: a frozen plan, made by a pure function of the slots and a budget.

Like vLLM's `SchedulerOutput`: the runner asks `plan_step()` what goes into the next
`llama_decode`, fills the batch from the plan, decodes, and samples the plan's output rows.
The policy lives here alone and is tested without llama.cpp:
- every slot with a sampled token decodes it (one token each, always an output row);
- prompts still being read fill the rest of the budget in chunks, shortest remaining first
  with a share kept for the oldest (prefill.split_budget); a prompt's last chunk asks for an
  output row (its first token is sampled from it).
A long prompt is thus read over several steps and never stalls generating slots.
- images (negative pseudo-ids in a prompt, engine/vision.py) are not tokens: a prompt's text
  chunk stops before its next image, and one image per step is planned apart (`images`),
  which the runner evaluates by its own decode in the same step (the others still get
  their token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

from .prefill import Reader, split_budget


class SlotState(Protocol):
    """What the planner reads of a slot (slots.Slot provides it)."""

    @property
    def seq(self) -> int: ...

    @property
    def n_cached(self) -> int:
        """Tokens whose KV the slot holds: the next token's index (its KV position too,
        except after an image of a model with M-RoPE: vision.VisionPrompt.position)."""
        ...

    @property
    def next_token(self) -> int | None:
        """A sampled token waiting to be decoded."""
        ...

    @property
    def unread(self) -> Sequence[int]:
        """Prompt tokens still to decode (empty unless the slot reads a prompt)."""
        ...

    @property
    def submitted(self) -> float:
        """When the slot's request arrived (orders prompts of equal length; the oldest keeps a share)."""
        ...

    @property
    def image_len(self) -> int:
        """Positions of the image the unread tokens start with (read only when they start
        with a pseudo-id, i.e. a negative one)."""
        ...


@dataclass(frozen=True)
class Part:
    """One slot's tokens in the step's batch, at consecutive rows ending at `row`."""

    seq: int
    tokens: tuple[int, ...]
    pos0: int  # index of the first token in the slot's tokens (the runner maps it to a KV position)
    row: int  # batch row of the last token: its logits row when `output`
    output: bool  # sample from the last token
    prompt: bool  # prompt tokens (else one generated token)
    image: bool = False  # an image's pseudo-ids: evaluated by the projector, not in the batch


@dataclass(frozen=True)
class StepPlan:
    parts: tuple[Part, ...] = ()
    images: tuple[Part, ...] = ()  # at most one image, decoded apart from the batch

    @property
    def n_tokens(self) -> int:
        return sum(len(p.tokens) for p in self.parts)

    def __bool__(self) -> bool:
        return bool(self.parts or self.images)

    def only(self, seqs: Iterable[int]) -> StepPlan:
        """The same work for some slots alone, rows renumbered (retrying a failed decode
        request by request)."""
        keep = set(seqs)
        return _numbered([p for p in self.parts if p.seq in keep])


def plan_step(slots: Sequence[SlotState], budget: int) -> StepPlan:
    """The next step: generated tokens first, then prompt chunks up to `budget` tokens in all.

    Generated tokens are never cut (there is at most one per slot, and the context holds at
    most `budget` slots); prompts take what is left (prefill.split_budget: shortest remaining
    first, so short prompts never wait behind a long one; the oldest keeps a share)."""
    parts: list[Part] = []
    for s in slots:
        tok = s.next_token
        if tok is not None:
            parts.append(Part(s.seq, (tok,), s.n_cached, len(parts), output=True, prompt=False))
    rows = len(parts)
    images: list[Part] = []
    readers: dict[int, SlotState] = {}
    for s in sorted((s for s in slots if s.unread), key=lambda s: s.submitted):
        if s.unread[0] >= 0:
            readers[s.seq] = s
        elif not images:  # the oldest image waiting
            n = s.image_len
            images.append(Part(s.seq, tuple(s.unread[:n]), s.n_cached, -1, output=False, prompt=True, image=True))
    grants = split_budget(budget - rows, [Reader(s.seq, _text_run(s.unread), s.submitted) for s in readers.values()])
    for seq, n in grants:
        s = readers[seq]
        rest = s.unread
        rows += n
        parts.append(Part(s.seq, tuple(rest[:n]), s.n_cached, rows - 1, output=n == len(rest), prompt=True))
    return StepPlan(tuple(parts), tuple(images))


def _text_run(unread: Sequence[int]) -> int:
    """Tokens before the first image pseudo-id (negative)."""
    return next((i for i, t in enumerate(unread) if t < 0), len(unread))


def _numbered(parts: Sequence[Part]) -> StepPlan:
    """Assign batch rows in order: each part's last token's row."""
    out: list[Part] = []
    n = 0
    for p in parts:
        n += len(p.tokens)
        out.append(Part(p.seq, p.tokens, p.pos0, n - 1, p.output, p.prompt))
    return StepPlan(tuple(out))
