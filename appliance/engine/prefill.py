"""How one step's prompt budget is split among the prompts being read (a pure planner).

A step decodes every generating slot's next token first (decoding is never starved); what is
left of the batch goes to prompts. Arrival order would let one long prompt take the whole
budget for several steps while short prompts that came just after it wait, so their first
token comes late (measured: with every 4th prompt ~1,370 tokens, short prompts' TTFT p95 was
1.65x llama-server's). So prompts are served shortest-remaining first: a short prompt is read
in the next step whatever is in front of it. The prompt waiting longest still gets a share
of every step, so a stream of short prompts cannot starve a long one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Hashable, Sequence, TypeVar

K = TypeVar("K", bound=Hashable)

OLDEST_SHARE = 0.25  # of the step's prompt budget, reserved for the prompt waiting longest


@dataclass(frozen=True)
class Reader(Generic[K]):
    key: K
    remaining: int  # prompt tokens still to read
    since: float  # when its request was submitted (orders equal lengths, picks the oldest)


def split_budget(budget: int, readers: Sequence[Reader[K]], oldest_share: float = OLDEST_SHARE) -> list[tuple[K, int]]:
    """(key, tokens this step) for the readers that get any, in the order to put them in the
    batch. The oldest reader first gets up to `budget * oldest_share`; then the rest goes to
    the others shortest-remaining first, and whatever is left back to the oldest."""
    if budget <= 0 or not readers:
        return []
    oldest = min(readers, key=lambda r: (r.since, r.remaining))
    grant: dict[K, int] = {oldest.key: min(oldest.remaining, max(1, int(budget * oldest_share)))}
    left = budget - grant[oldest.key]
    for r in sorted(readers, key=lambda r: (r.remaining, r.since)):
        if left <= 0:
            break
        extra = min(r.remaining - grant.get(r.key, 0), left)
        if extra > 0:
            grant[r.key] = grant.get(r.key, 0) + extra
            left -= extra
    order = sorted(readers, key=lambda r: (r.remaining, r.since))
    return [(r.key, grant[r.key]) for r in order if grant.get(r.key, 0) > 0]
