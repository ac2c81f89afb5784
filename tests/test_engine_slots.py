"""The slot table (engine/slots.py) on its own: admission order, prefix reuse, release.

No llama.cpp: the KV trims the table asks for are recorded by the `trim` it is given."""

from __future__ import annotations

import asyncio
from typing import Iterator

import pytest

from appliance.clock import FakeClock
from appliance.engine.generation import Generation
from appliance.engine.slots import Job, SlotTable, common_prefix
from appliance.engine.step import plan_step
from appliance.engine.types import SamplingParams


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


class Table:
    """A SlotTable whose trims are recorded (and may be refused), on a fake clock."""

    def __init__(self, n: int, loop: asyncio.AbstractEventLoop, refuse_trims: bool = False) -> None:
        self.trims: list[tuple[int, int]] = []
        self.refuse = refuse_trims
        self.clock = FakeClock()
        self.t = SlotTable(n, self._trim, now=self.clock.monotonic)
        self.loop = loop

    def _trim(self, seq: int, keep: int) -> bool:
        self.trims.append((seq, keep))
        return not (self.refuse and keep > 0)

    def job(self, prompt: list[int], n: int = 1, t: float = 0.0) -> Job:
        gen = Generation(self.loop, n, lambda: None)
        j = Job(gen=gen, prompt=prompt, params=SamplingParams(n=n), max_tokens=8, samplers=[], t_submit=t)
        self.t.pending.append(j)
        return j


def test_common_prefix() -> None:
    assert common_prefix([], [1, 2]) == 0
    assert common_prefix([1, 2, 3], [1, 2, 3]) == 3
    assert common_prefix([1, 2, 3, 4], [1, 2]) == 2
    assert common_prefix([1, 2, 3], [1, 9, 3]) == 1
    assert common_prefix([5], [6]) == 0


def test_a_request_takes_the_slot_with_the_longest_cached_prefix(loop: asyncio.AbstractEventLoop) -> None:
    tb = Table(3, loop)
    tb.t.slots[0].cached = [1, 2, 9, 9]
    tb.t.slots[1].cached = [1, 2, 3, 4, 7, 7]
    tb.t.slots[2].cached = [8]
    j = tb.job([1, 2, 3, 4, 5, 6])
    assert tb.t.admit() == [j]
    s = tb.t.slots[1]
    assert j.slots == [s] and s.job is j and s.reading and not s.waiting
    assert j.cached == 4 and s.cached == [1, 2, 3, 4]
    assert tb.trims == [(1, 4)]  # the KV past the shared prefix is dropped
    assert s.unread == [5, 6] and tb.t.busy == 1 and not tb.t.pending


def test_at_least_one_prompt_token_is_read_even_when_all_are_cached(loop: asyncio.AbstractEventLoop) -> None:
    tb = Table(1, loop)
    tb.t.slots[0].cached = [1, 2, 3]
    j = tb.job([1, 2, 3])
    tb.t.admit()
    assert j.cached == 2 and tb.t.slots[0].unread == [3] and tb.trims == [(0, 2)]


def test_a_refused_partial_trim_drops_the_whole_cache(loop: asyncio.AbstractEventLoop) -> None:
    tb = Table(1, loop, refuse_trims=True)
    tb.t.slots[0].cached = [1, 2, 3, 4]
    j = tb.job([1, 2, 7])
    tb.t.admit()
    assert tb.trims == [(0, 2), (0, -1)]
    assert j.cached == 0 and tb.t.slots[0].cached == [] and tb.t.slots[0].unread == [1, 2, 7]


def test_a_cached_prefix_that_is_kept_whole_needs_no_trim(loop: asyncio.AbstractEventLoop) -> None:
    tb = Table(1, loop)
    tb.t.slots[0].cached = [1, 2]
    j = tb.job([1, 2, 3, 4])
    tb.t.admit()
    assert j.cached == 2 and tb.trims == []


def test_n_choices_take_the_prefix_slot_to_read_and_the_least_recently_used_to_wait(
    loop: asyncio.AbstractEventLoop,
) -> None:
    tb = Table(4, loop)
    for i, used in enumerate([3.0, 1.0, 4.0, 2.0]):
        tb.t.slots[i].last_used = used
    tb.t.slots[2].cached = [1, 2, 8]
    j = tb.job([1, 2, 3], n=3)
    tb.t.admit()
    assert [s.seq for s in j.slots] == [2, 1, 3]
    assert [s.reading for s in j.slots] == [True, False, False]
    assert [s.waiting for s in j.slots] == [False, True, True]
    assert j.active == 3 and tb.t.busy == 3
    # only the reading slot has prompt work for the planner
    assert [p.seq for p in plan_step(tb.t.slots, 512).parts] == [2]


def test_admission_is_in_arrival_order_and_a_large_request_blocks_the_ones_behind(
    loop: asyncio.AbstractEventLoop,
) -> None:
    tb = Table(2, loop)
    a = tb.job([1], t=0.0)
    big = tb.job([2], n=2, t=1.0)
    small = tb.job([3], t=2.0)
    assert tb.t.admit() == [a]  # `big` needs both slots; `small` may not pass it
    assert list(tb.t.pending) == [big, small]
    assert tb.t.release(a.slots[0]) is a
    assert tb.t.admit() == [big]
    assert list(tb.t.pending) == [small]


def test_release_keeps_the_cache_and_ends_the_job_with_its_last_slot(loop: asyncio.AbstractEventLoop) -> None:
    tb = Table(2, loop)
    j = tb.job([1, 2], n=2)
    tb.t.admit()
    first, second = j.slots
    first.cached = [1, 2, 5]
    tb.clock.advance(7.0)
    assert tb.t.release(first) is None  # one choice still runs
    assert first.job is None and first.choice is None and not first.reading
    assert first.cached == [1, 2, 5] and first.last_used == tb.clock.monotonic()
    assert tb.t.release(second) is j and j.active == 0
    assert tb.t.busy == 0
    assert tb.t.release(second) is None  # already free


def test_detach_frees_every_slot_of_a_failed_job_but_not_others(loop: asyncio.AbstractEventLoop) -> None:
    tb = Table(3, loop)
    failed = tb.job([1], n=2)
    other = tb.job([2])
    tb.t.admit()
    tb.t.detach(failed)
    assert all(s.job is None for s in failed.slots)
    assert tb.t.busy == 1 and other.slots[0].job is other
