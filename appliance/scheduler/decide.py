"""What the scheduler does next about residency: a pure function of the models' states.

`decide()` reads the models (never changes them) and returns a `Decision`: unloads to start
(due ones: keep_alive, admin, catalog removal, a drained model gone idle; or idle models a
load must evict first), or one load that fits as things stand, the busy models to drain, and
the models whose requests must be refused. The scheduler applies it at once, in the same
synchronous step, so no request can be admitted to a model between the decision to unload
it and its leaving service. Loads and evictions are separate decisions: a load is decided
only once its victims are gone and the plan fits without them, which is what keeps the
resident footprints within the budget whatever the interleaving.

The placement planner is injected (`Planner`), as are the clock's reading and the headers
being ready, so this is testable without hardware, threads or time.

Who may be evicted when (the residents the planner sees):
- pinned: never;
- loading or unloading: later (busy_wait): in transition, so not a reason to refuse — an
  unloading model frees its memory shortly, a loading one becomes evictable once served;
- idle (no request in flight or waiting): now, least recently used first;
- busy: only after `queue.swap_after` (then drained: admits nothing, unloads once idle).
So a model that fits the budget beside the pinned models alone is never refused: it waits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

from .lifecycle import ModelEntry
from .memory import Evictable, Resident
from .placement import Impossible, Plan, Wait

UnloadReason = Literal["evict", "keep_alive", "requested", "removed", "shutdown"]
Planner = Callable[[ModelEntry, list[Resident]], "Plan | Wait | Impossible"]


@dataclass(frozen=True)
class Refusal:
    """The requests waiting for `model` are refused: it can never fit, or cannot be planned."""

    model: str
    error: Impossible | Exception


@dataclass(frozen=True)
class Decision:
    unloads: tuple[tuple[str, UnloadReason], ...] = ()
    load: tuple[str, Plan] | None = None
    drain: frozenset[str] | None = None  # the models to keep draining; None: leave the marks
    waits: tuple[str, ...] = ()  # models whose requests keep waiting for room
    refusals: tuple[Refusal, ...] = ()

    @property
    def starts_op(self) -> bool:
        return bool(self.unloads) or self.load is not None


def evictability(o: ModelEntry, oldest_wait: float | None, now: float, swap_after: float) -> Evictable:
    """When `o` may leave to make room for a model whose oldest request arrived at `oldest_wait`."""
    if o.pinned:
        return "never"
    if o.state in ("loading", "unloading"):
        return "busy_wait"
    if o.idle:
        return "idle"
    if o.unload_requested or o.removed or o.state == "draining":
        return "busy_ok"
    since = max(oldest_wait if oldest_wait is not None else now, o.loaded_at)
    return "busy_ok" if now >= since + swap_after else "busy_wait"


def residents(models: Sequence[ModelEntry], target: ModelEntry, now: float, swap_after: float) -> list[Resident]:
    """Every other model holding memory, with when it may be evicted for `target`."""
    oldest = target.queue.oldest()
    return [
        Resident(o.id, dict(o.charges), dict(o.mapped), evictability(o, oldest, now, swap_after), o.last_used or o.loaded_at)
        for o in models
        if o is not target and o.resident
    ]


def unload_due(m: ModelEntry, now: float) -> bool:
    """An idle resident model that should unload now."""
    if m.state == "draining" or m.unload_requested:
        return True
    if len(m.queue):
        return False
    if m.removed:
        return True
    if m.cfg.pinned:
        return False
    ka = m.idle_limit
    return not math.isinf(ka) and now >= (m.last_used or m.loaded_at) + ka


def unload_reason(m: ModelEntry) -> UnloadReason:
    """Why a due unload happens (only "evict" is reported as an eviction)."""
    if m.state == "draining":
        return "evict"  # a waiting model needs its room (swap_after has passed)
    if m.unload_requested:
        return "requested"
    if m.removed:
        return "removed"
    return "keep_alive"


def decide(
    models: Sequence[ModelEntry],
    now: float,
    *,
    swap_after: float,
    op_running: bool,
    stopping: bool,
    ready: Callable[[ModelEntry], bool],
    planner: Planner,
) -> Decision:
    """The next residency step (see the module docstring). At most one operation starts."""
    if not op_running and not stopping:
        due = [m for m in models if m.state in ("loaded", "draining") and m.leases == 0 and unload_due(m, now)]
        if due:
            return Decision(unloads=tuple((m.id, unload_reason(m)) for m in due))

    wanting = sorted(
        (m for m in models if m.state == "unloaded" and len(m.queue) and ready(m)),
        key=lambda m: m.queue.oldest() or now,
    )
    refusals: list[Refusal] = []
    waits: list[str] = []
    drain: set[str] = set()
    unloads: tuple[tuple[str, UnloadReason], ...] = ()
    load: tuple[str, Plan] | None = None
    busy = op_running
    for m in wanting:
        try:
            p = planner(m, residents(models, m, now, swap_after))
        except Exception as e:  # no file, unreadable header, bad gpu index: tell its waiters
            refusals.append(Refusal(m.id, e))
            continue
        if isinstance(p, Impossible):
            refusals.append(Refusal(m.id, p))
            continue
        if stopping or busy or drain or isinstance(p, Wait):
            waits.append(m.id)
            continue
        if p.drain:
            drain.update(p.drain)
            waits.append(m.id)
            continue
        if p.evict:  # the victims go first; the load is decided again once they are gone
            unloads = tuple((mid, "evict") for mid in p.evict)
        else:
            load = (m.id, p)
        busy = True
    started = bool(unloads) or load is not None
    # While an operation runs and nothing new was decided, the drain marks stand; otherwise
    # they are what this decision wants (a swap starting now needs no drain: marks from
    # earlier plans are stale, since the LRU choice of busy model can flip as requests end).
    keep = op_running and not drain and not started
    return Decision(
        unloads=unloads,
        load=load,
        drain=None if keep else frozenset(drain),
        waits=tuple(waits),
        refusals=tuple(refusals),
    )
