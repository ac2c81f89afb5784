"""What the scheduler reports to its events sink (the service's Metrics): loads with their
time and outcome, evictions (unloads that make room, and only those), queue waits; and
`runners()`, the watchdog's view of loaded runners. Fake 24 GB card, fake clock."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from schedharness import GB, Holder, make, settle, use


class Recorder:
    def __init__(self) -> None:
        self.loads: list[tuple[str, float | None, bool]] = []
        self.evicted: list[str] = []
        self.waits: list[tuple[str, float]] = []

    def model_loaded(self, model: str, seconds: float | None, ok: bool = True) -> None:
        self.loads.append((model, seconds, ok))

    def model_evicted(self, model: str) -> None:
        self.evicted.append(model)

    def queue_waited(self, model: str, seconds: float) -> None:
        self.waits.append((model, seconds))


def recorded(h: Any) -> Recorder:
    rec = Recorder()
    h.sched.events = rec
    return rec


async def test_loads_and_lru_evictions_are_reported(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 10 * GB, "b": 10 * GB, "c": 10 * GB})
    rec = recorded(h)
    await use(h, "a")
    await use(h, "b")
    await use(h, "c")  # two fit: a (least recently used) makes room
    assert h.events == ["load a", "load b", "unload a", "load c"]
    assert rec.evicted == ["a"]
    assert [(m, ok) for m, _, ok in rec.loads] == [("a", True), ("b", True), ("c", True)]
    assert rec.waits == [("a", 0.0), ("b", 0.0), ("c", 0.0)]  # the clock did not move


async def test_load_time_and_queue_wait_follow_the_clock(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB}, models={"a": {"parallel": 1}})
    rec = recorded(h)
    h.gates["a"] = gate = asyncio.Event()  # the load blocks until the gate opens
    first = asyncio.create_task(use(h, "a"))
    await settle()
    h.clock.advance(7)
    gate.set()
    await first
    assert rec.loads == [("a", 7.0, True)]
    assert rec.waits == [("a", 7.0)]  # waited for the load
    hold = Holder(h, "a")
    await hold.admitted.wait()
    second = asyncio.create_task(use(h, "a"))  # parallel = 1: waits for the holder
    await settle()
    h.clock.advance(2.5)
    await hold.done()
    await second
    assert rec.waits == [("a", 7.0), ("a", 0.0), ("a", 2.5)]


async def test_busy_model_drained_for_a_swap_counts_as_an_eviction(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 15 * GB, "b": 15 * GB})
    rec = recorded(h)
    hold = Holder(h, "a")
    await hold.admitted.wait()
    b = asyncio.create_task(use(h, "b"))
    await settle()
    h.clock.advance(2)  # swap_after
    await settle()
    assert rec.evicted == []  # a is still running its request
    await hold.done()
    await b
    assert h.events == ["load a", "unload a", "load b"] and rec.evicted == ["a"]


async def test_keep_alive_admin_and_shutdown_unloads_are_not_evictions(tmp_path: Path) -> None:
    h = make(tmp_path, {"k": 5 * GB, "u": 5 * GB, "s": 5 * GB}, models={"k": {"keep_alive": "60s"}})
    rec = recorded(h)
    for mid in ("k", "u", "s"):
        await use(h, mid)
    h.clock.advance(60)
    await settle()
    assert h.state("k") == "unloaded"
    await h.sched.unload("u")
    await h.sched.stop()
    assert h.events[-3:] == ["unload k", "unload u", "unload s"]
    assert rec.evicted == []


async def test_failed_load_is_reported_with_its_outcome(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB})
    rec = recorded(h)

    def failing(*args: Any) -> Any:
        raise RuntimeError("llama.cpp could not load")

    h.sched._loader = failing
    with pytest.raises(Exception, match="could not load"):
        await use(h, "a")
    assert rec.loads == [("a", 0.0, False)] and rec.waits == []


async def test_a_broken_sink_does_not_break_scheduling(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 10 * GB, "b": 10 * GB, "c": 10 * GB})

    class Broken(Recorder):
        def model_evicted(self, model: str) -> None:
            raise RuntimeError("sink down")

        def queue_waited(self, model: str, seconds: float) -> None:
            raise RuntimeError("sink down")

    h.sched.events = Broken()
    for mid in ("a", "b", "c"):
        await use(h, mid)
    assert h.loaded() == {"b", "c"}


async def test_runners_lists_resident_runners(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 10 * GB, "b": 10 * GB, "c": 10 * GB})
    assert h.sched.runners() == {}
    await use(h, "a")
    await use(h, "b")
    assert h.sched.runners() == {"a": h.runners[0], "b": h.runners[1]}
    await use(h, "c")
    assert set(h.sched.runners()) == {"b", "c"} and h.sched.runners()["c"] is h.runners[2]


async def test_a_swap_that_needs_no_drain_clears_stale_drain_marks(tmp_path: Path) -> None:
    """Which busy model to drain follows LRU and can flip as requests finish. Once c's load
    starts by evicting an idle model, a drain mark left on another busy model is stale: it
    must not unload that model when its requests finish (found by scripts/demo_swap.py)."""
    h = make(tmp_path, {"a": 10 * GB, "b": 10 * GB, "c": 10 * GB})
    rec = recorded(h)
    ha1, ha2, hb = Holder(h, "a"), Holder(h, "a"), Holder(h, "b")
    for x in (ha1, ha2, hb):
        await x.admitted.wait()
    h.gates["c"] = gate = asyncio.Event()
    c = asyncio.create_task(use(h, "c"))
    await settle()
    h.clock.advance(2)  # swap_after: one busy model is marked to drain (LRU: a)
    await settle()
    h.clock.advance(1)
    await ha1.done()  # a was just used: now b is least recently used, so b is marked instead
    await ha2.done()  # a is idle: c's load evicts it, no drain needed
    await settle()
    assert h.events == ["load a", "load b", "unload a"]
    await hb.done()  # b goes idle while c is still loading
    gate.set()
    await c
    await settle()
    assert h.loaded() == {"b", "c"} and rec.evicted == ["a"]
    assert h.events == ["load a", "load b", "unload a", "load c"]
