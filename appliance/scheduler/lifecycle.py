"""One model's lifecycle: unloaded -> loading -> loaded -> draining -> unloading -> unloaded.

Every change of state goes through a transition method here, which checks the state it
leaves and resets the fields that belong to it, so no caller can leave a half-reset model
behind (a "loading" model without charges, an "unloaded" one still holding a runner). The
scheduler (core.py) calls these only from its event loop; nothing here blocks.

    unloaded --begin_load--> loading --finish_load--> loaded --begin_drain--> draining
        ^                       |                       ^  |                     |
        |                   fail_load                cancel_drain           begin_unload
        |                       v                          |                     v
        +-------- finish_unload ------------ unloading <---+-- begin_unload -----+

A draining model admits nothing and unloads once idle (a swap needs its room, or an admin
asked). /admin/models shows it as "loaded", the contract's name for a resident model.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..config import ModelConfig
from ..engine.protocol import EngineRunner
from .admission import FairQueue
from .estimate import Estimate
from .placement import Placement

State = Literal["unloaded", "loading", "loaded", "draining", "unloading"]
RESIDENT: frozenset[str] = frozenset({"loading", "loaded", "draining", "unloading"})


RunnerLike = EngineRunner  # what loaders return and leases hand out (engine/protocol.py)


class IllegalTransition(RuntimeError):
    """A transition asked of a model in a state it cannot leave that way (a scheduler bug)."""


@dataclass(eq=False)
class ModelEntry:
    id: str
    cfg: ModelConfig  # the catalog's current settings (apply at the next load)
    state: State = "unloaded"
    loaded_cfg: ModelConfig | None = None
    runner: RunnerLike | None = None
    placement: Placement | None = None
    estimate: Estimate | None = None
    measured: int | None = None
    charges: dict[int, int] = field(default_factory=dict)  # bytes per device, while resident
    mapped: dict[int, int] = field(default_factory=dict)
    busy_slots: int = 0
    leases: int = 0
    queue: FairQueue = field(default_factory=FairQueue)
    last_used: float | None = None
    loaded_at: float = 0.0
    completions: deque[float] = field(default_factory=deque)
    unload_requested: bool = False
    removed: bool = False  # gone from the catalog: unload once idle
    sha256: str | None = None
    keep_alive: float | None = None  # a request's own (Ollama's keep_alive) until the next unload
    state_waiters: list[asyncio.Future[None]] = field(default_factory=list)

    # --- derived -----------------------------------------------------------------------

    @property
    def parallel(self) -> int:
        return (self.loaded_cfg or self.cfg).parallel

    @property
    def idle_limit(self) -> float:
        """How long it may stay loaded while idle: a request's keep_alive, else the catalog's."""
        return self.keep_alive if self.keep_alive is not None else self.cfg.keep_alive

    @property
    def idle(self) -> bool:
        return self.leases == 0 and len(self.queue) == 0

    @property
    def admitting(self) -> bool:
        return self.state == "loaded" and not self.unload_requested

    @property
    def resident(self) -> bool:
        """Holds (or is about to hold, or still holds) memory: charged against the budget."""
        return self.state in RESIDENT

    @property
    def pinned(self) -> bool:
        return (self.loaded_cfg or self.cfg).pinned

    # --- transitions -------------------------------------------------------------------

    def _leave(self, allowed: tuple[State, ...], to: State) -> None:
        if self.state not in allowed:
            raise IllegalTransition(f"model {self.id!r}: {self.state} -> {to}")
        self.state = to

    def begin_load(self, cfg: ModelConfig, placement: Placement, estimate: Estimate, charges: dict[int, int]) -> None:
        """Reserve the plan's charges now, before the load runs, so the next decision sees them."""
        self._leave(("unloaded",), "loading")
        self.loaded_cfg, self.placement, self.estimate = cfg, placement, estimate
        self.charges = dict(charges)
        # mmap'd weights the OS counts as free: at most what each device is charged (a model
        # split over RPC workers keeps only part of its file's pages in use on the head)
        self.mapped = {i: min(estimate.mapped, n) for i, n in charges.items()} if placement.device == "cpu" else {}

    def finish_load(self, runner: RunnerLike, measured: dict[int, int], now: float) -> None:
        """Loaded: charged what was measured when there is a measurement, else the estimate."""
        self._leave(("loading",), "loaded")
        if measured:
            self.measured = sum(measured.values())
            self.charges = dict(measured)
        self.runner, self.loaded_at, self.last_used = runner, now, now

    def fail_load(self) -> None:
        self._leave(("loading",), "unloaded")
        self._reset()

    def begin_drain(self) -> None:
        """Admit nothing more; unload once the requests in flight are done."""
        self._leave(("loaded",), "draining")

    def cancel_drain(self) -> None:
        self._leave(("draining",), "loaded")

    def begin_unload(self) -> RunnerLike | None:
        """Leave service now (admits nothing from here on); returns the runner to close."""
        self._leave(("loaded", "draining"), "unloading")
        return self.runner

    def finish_unload(self) -> None:
        self._leave(("unloading",), "unloaded")
        self._reset()

    def _reset(self) -> None:
        """What an unloaded model holds: nothing resident, no pending unload, waiters told."""
        self.runner = self.loaded_cfg = self.placement = None
        self.charges, self.mapped = {}, {}
        self.unload_requested = False
        self.keep_alive = None
        for f in self.state_waiters:  # unload() callers: the model is unloaded now
            if not f.done():
                f.set_result(None)
        self.state_waiters.clear()

    def public_state(self) -> Literal["unloaded", "loading", "loaded", "unloading"]:
        """The state /admin/models shows (SPEC: unloaded, loading, loaded, unloading)."""
        return "loaded" if self.state == "draining" else self.state


def describe(m: ModelEntry) -> dict[str, Any]:
    """A debugging view of one entry (used in invariant errors)."""
    return {"id": m.id, "state": m.state, "charges": dict(m.charges), "leases": m.leases, "queue": len(m.queue)}
