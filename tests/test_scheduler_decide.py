"""The pure pieces of the scheduler: the lifecycle's transitions and `decide()`."""

from __future__ import annotations

import asyncio

import pytest

from appliance.config import ModelConfig
from appliance.scheduler.admission import Waiter
from appliance.scheduler.decide import decide, evictability
from appliance.scheduler.estimate import Estimate
from appliance.scheduler.lifecycle import IllegalTransition, ModelEntry
from appliance.scheduler.memory import Memory, Resident, check_budget
from appliance.scheduler.placement import Placement, Plan, plan
from appliance.errors import BudgetExceeded
from appliance.hardware.devices import Device

GB = 1000**3
CPU = Placement("cpu", (0,), 0, "none", 0, True)
DEVICES = [Device(0, "cpu", "RAM", 100 * GB, 100 * GB)]


def entry(mid: str, size: int, *, pinned: bool = False) -> ModelEntry:
    m = ModelEntry(mid, ModelConfig(source=f"file:///m/{mid}.gguf", pinned=pinned))
    m.estimate = Estimate(size, 0, 0)
    return m


def loaded(m: ModelEntry, now: float = 0.0) -> ModelEntry:
    assert m.estimate is not None
    m.begin_load(m.cfg, CPU, m.estimate, {0: m.estimate.total})
    m.finish_load(object(), {}, now)  # type: ignore[arg-type]
    return m


def wanting(m: ModelEntry, at: float = 0.0) -> ModelEntry:
    fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    m.queue.push(Waiter("k", 1, at, at + 100, fut))
    return m


def planner(budget: int):  # noqa: ANN201
    def p(m: ModelEntry, residents: list[Resident]) -> object:
        assert m.estimate is not None
        mem = Memory.read(DEVICES, [budget], 0, residents)
        return plan(m.cfg, 1, lambda kind, k: m.estimate, mem, residents, lambda i, n: ValueError())  # type: ignore[arg-type, return-value]

    return p


def test_transitions_check_the_state_they_leave_and_reset_their_fields() -> None:
    m = entry("a", GB)
    with pytest.raises(IllegalTransition):
        m.begin_unload()
    loaded(m)
    assert m.state == "loaded" and m.charges == {0: GB} and m.resident
    m.begin_drain()
    assert not m.admitting and m.public_state() == "loaded"
    runner = m.begin_unload()
    assert runner is not None and m.state == "unloading" and m.charges == {0: GB}  # charged until freed
    m.finish_unload()
    assert (m.state, m.runner, m.charges, m.placement) == ("unloaded", None, {}, None)
    with pytest.raises(IllegalTransition):
        m.finish_unload()


async def test_eviction_and_load_are_separate_decisions() -> None:
    a, b = loaded(entry("a", 6 * GB)), wanting(entry("b", 6 * GB))
    d = decide([a, b], 10.0, swap_after=2, op_running=False, stopping=False, ready=lambda m: True, planner=planner(10 * GB))
    assert d.unloads == (("a", "evict"),) and d.load is None  # the victim goes first
    a.begin_unload()
    d = decide([a, b], 10.0, swap_after=2, op_running=True, stopping=False, ready=lambda m: True, planner=planner(10 * GB))
    assert d.load is None and d.refusals == () and d.waits == ("b",)  # unloading: b waits, never refused
    a.finish_unload()
    d = decide([a, b], 10.0, swap_after=2, op_running=False, stopping=False, ready=lambda m: True, planner=planner(10 * GB))
    assert d.load is not None and d.load[0] == "b" and isinstance(d.load[1], Plan)


async def test_only_pinned_models_make_a_request_impossible() -> None:
    p = loaded(entry("p", 6 * GB, pinned=True))
    big = wanting(entry("big", 6 * GB))
    d = decide([p, big], 0.0, swap_after=2, op_running=False, stopping=False, ready=lambda m: True, planner=planner(10 * GB))
    assert [r.model for r in d.refusals] == ["big"]
    loading = entry("l", 6 * GB)
    loading.begin_load(loading.cfg, CPU, Estimate(6 * GB, 0, 0), {0: 6 * GB})
    assert evictability(loading, 0.0, 0.0, 2) == "busy_wait"
    small = wanting(entry("s", 3 * GB))
    d = decide([loading, small], 0.0, swap_after=2, op_running=True, stopping=False, ready=lambda m: True, planner=planner(8 * GB))
    assert d.refusals == () and d.waits == ("s",)


def test_budget_check() -> None:
    check_budget([{0: 4}, {0: 6}], [10])
    check_budget([{0: 40}], [None])  # "auto": no fixed figure
    with pytest.raises(BudgetExceeded):
        check_budget([{0: 4}, {0: 7}], [10])
