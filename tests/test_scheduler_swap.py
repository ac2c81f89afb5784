"""Hot swap under load (issue 14): no spurious insufficient_memory while a swap is under way,
and the budget invariant whatever the interleaving (a seeded randomized walk, fake clock)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from appliance.config import Catalog, ModelConfig
from appliance.errors import ApplianceError, InsufficientMemory, ModelNotFound, QueueFull, QueueTimeout
from schedharness import GB, Harness, Holder, make, settle, use


def resident_bytes(h: Harness) -> int:
    """What the scheduler charges its resident models (/admin/models' figures)."""
    return sum((s.memory_measured or s.memory_estimated or 0) for s in h.sched.snapshot() if s.state != "unloaded")


def allocated(h: Harness) -> int:
    """What the fake card really has allocated (runners not yet closed)."""
    d = h.hw.devices()[0]
    return d.total - d.free


async def test_request_during_a_load_waits_instead_of_insufficient_memory(tmp_path: Path) -> None:
    """A model being loaded is in transition, not unevictable: b (fits alone) waits for it."""
    h = make(tmp_path, {"a": 8 * GB, "b": 8 * GB}, memory={"budget": "10GB"}, queue={"swap_after": "1s"})
    h.gates["a"] = asyncio.Event()
    a = Holder(h, "a")
    await settle()
    assert h.state("a") == "loading"
    b = asyncio.create_task(use(h, "b"))
    await settle()
    assert not b.done() and h.sched.status("b").queue_depth == 1  # waiting, not refused
    h.gates["a"].set()
    await a.admitted.wait()
    h.clock.advance(1)  # swap_after: a is drained (admits nothing), then unloads once idle
    await settle()
    await a.done()
    await b
    assert h.events == ["load a", "unload a", "load b"]


async def test_request_during_an_unload_waits_instead_of_insufficient_memory(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 8 * GB, "b": 8 * GB, "c": 8 * GB}, memory={"budget": "10GB"})
    await use(h, "a")
    h.delays["a"] = 5.0  # closing a takes 5 s of fake time
    b = asyncio.create_task(use(h, "b"))  # evicts idle a: a is "unloading" for 5 s
    await settle()
    assert h.state("a") == "unloading"
    c = asyncio.create_task(use(h, "c"))  # before the fix: 503 insufficient_memory at once
    await settle()
    assert not c.done()
    h.clock.advance(5)
    await b
    await c
    assert h.events == ["load a", "unload a", "load b", "unload b", "load c"]


async def test_victim_requested_during_its_eviction_is_not_kept_resident(tmp_path: Path) -> None:
    """Pinned p + two, budget for two: requests for the unloaded m2 and the idle m3 arrive in
    the same turn. Before the fix m3 was admitted between the decision to evict it and the
    eviction, which was then skipped, and m2 loaded anyway: three resident, over budget."""
    h = make(
        tmp_path, {"p": 8 * GB, "m2": 8 * GB, "m3": 8 * GB},
        models={"p": {"pinned": True}}, memory={"budget": "17GB"},
    )
    await h.sched.start()
    await use(h, "m3")
    m2 = asyncio.create_task(use(h, "m2"))
    m3 = Holder(h, "m3")
    await settle()
    assert allocated(h) <= 17 * GB and resident_bytes(h) <= 17 * GB
    await m2
    await m3.admitted.wait()
    assert allocated(h) <= 17 * GB and resident_bytes(h) <= 17 * GB
    await m3.done()
    assert "unload p" not in h.events


async def test_model_that_cannot_fit_beside_pinned_ones_is_still_refused_at_once(tmp_path: Path) -> None:
    h = make(tmp_path, {"p": 8 * GB, "a": 8 * GB, "big": 12 * GB}, models={"p": {"pinned": True}}, memory={"budget": "17GB"})
    await h.sched.start()
    h.gates["a"] = asyncio.Event()
    a = asyncio.create_task(use(h, "a"))
    await settle()  # a is loading: in transition, so it does not count as unevictable...
    with pytest.raises(InsufficientMemory):  # ...but p is pinned, and 8 + 12 > 17
        await use(h, "big")
    h.gates["a"].set()
    await a


# --- the randomized walk ------------------------------------------------------------------

SIZES = {"p": 6 * GB, "a": 5 * GB, "b": 7 * GB, "c": 9 * GB, "d": 4 * GB}
BUDGET = 16 * GB  # p (pinned) plus any one other always fits; p + two often does not


class Walk:
    """Random arrivals, completions, time steps (load delays, swap_after, keep_alive,
    max_wait), admin unloads and catalog edits; the invariant is checked after each step."""

    def __init__(self, h: Harness, rng: random.Random) -> None:
        self.h, self.rng = h, rng
        self.holders: list[Holder] = []
        self.errors: list[BaseException] = []
        self.admin: list[asyncio.Task[None]] = []
        self.cfgs = dict(h.sched.catalog.models)
        self.removed: set[str] = set()

    def arrive(self) -> None:
        mid = self.rng.choice([m for m in SIZES if m not in self.removed])
        self.holders.append(Holder(self.h, mid, key=self.rng.choice("xyz")))

    def complete(self) -> None:
        admitted = [x for x in self.holders if x.admitted.is_set() and not x.release.is_set()]
        if admitted:
            self.rng.choice(admitted).release.set()

    def advance(self) -> None:
        self.h.clock.advance(self.rng.choice([0.01, 0.3, 1, 2.5, 5, 40, 400]))

    def unload(self) -> None:
        mid = self.rng.choice([m for m in SIZES if m not in self.removed])
        self.admin.append(asyncio.create_task(self.h.sched.unload(mid)))

    def edit_catalog(self) -> None:
        mid = self.rng.choice(["a", "b", "c", "d"])
        if mid in self.removed:
            self.removed.discard(mid)
        elif self.rng.random() < 0.3:
            self.removed.add(mid)
        else:
            c = self.cfgs[mid]
            self.cfgs[mid] = c.model_copy(update={"parallel": 3 - c.parallel + 2 if c.parallel in (2, 3) else 2})
        cat = {k: v for k, v in self.cfgs.items() if k not in self.removed}
        self.h.sched.update_catalog(Catalog(cat, self.h.sched.catalog.path))

    def check(self) -> None:
        assert allocated(self.h) <= BUDGET, self.h.events[-6:]
        assert resident_bytes(self.h) <= BUDGET, [(s.id, s.state) for s in self.h.sched.snapshot()]
        for x in self.holders:
            if x.task.done() and x.task.exception() is not None:
                e = x.task.exception()
                # fits beside the pinned model: never refused for memory
                assert not isinstance(e, InsufficientMemory), e
                assert isinstance(e, (QueueTimeout, ModelNotFound, QueueFull)), repr(e)

    async def step(self) -> None:
        r = self.rng.random()
        if r < 0.35:
            self.arrive()
        elif r < 0.65:
            self.complete()
        elif r < 0.9:
            self.advance()
        elif r < 0.95:
            self.unload()
        else:
            self.edit_catalog()
        await settle(20)
        self.check()

    async def finish(self) -> None:
        """Let everything end: every request admitted or refused, every admin unload done."""
        for _ in range(200):
            for x in self.holders:
                x.release.set()
            self.h.clock.advance(1)
            await settle(20)
            self.check()
            if all(x.task.done() for x in self.holders) and all(t.done() for t in self.admin):
                return
        raise AssertionError("requests still pending after the walk")


@pytest.mark.parametrize("seed", range(12))
async def test_randomized_interleavings_keep_the_budget(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    h = make(
        tmp_path, SIZES, models={"p": {"pinned": True}},
        memory={"budget": f"{BUDGET // GB}GB"}, queue={"max_wait": "60s", "swap_after": "2s", "max_waiting": 64},
    )
    await h.sched.start()
    for mid in SIZES:
        h.delays[mid] = rng.choice([0.0, 0.5, 3.0])  # loads and unloads take fake time
    walk = Walk(h, rng)
    for _ in range(300):
        await walk.step()
    await walk.finish()
    served = sum(1 for x in walk.holders if x.task.exception() is None)
    assert served > 0
    with_errors = [x for x in walk.holders if x.task.exception() is not None]
    assert all(isinstance(x.task.exception(), ApplianceError) for x in with_errors)
