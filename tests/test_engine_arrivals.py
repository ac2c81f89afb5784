"""The idle runner's arrival policy (engine/arrivals.py) on its own: no llama.cpp, no clock."""

from __future__ import annotations

from appliance.engine.arrivals import Arrivals


def finish(a: Arrivals, n: int) -> None:
    for _ in range(n):
        a.finished()


def test_an_idle_runner_expects_the_clients_its_last_step_released() -> None:
    a = Arrivals(window_s=0.02)
    finish(a, 3)
    a.step_done(idle=True, now=10.0)
    assert a.expected(10.0) == 3
    assert a.expected(10.02) == 3


def test_nothing_is_expected_once_the_window_after_going_idle_has_passed() -> None:
    a = Arrivals(window_s=0.02)
    finish(a, 3)
    a.step_done(idle=True, now=10.0)
    assert a.expected(10.03) == 0


def test_only_the_step_that_left_the_runner_idle_counts() -> None:
    a = Arrivals(window_s=0.02)
    finish(a, 2)
    a.step_done(idle=False, now=10.0)  # others still generating: those two were admitted at once
    assert a.expected(10.0) == 0
    finish(a, 1)
    a.step_done(idle=True, now=10.01)
    assert a.expected(10.01) == 1


def test_a_busy_step_forgets_an_earlier_expectation() -> None:
    a = Arrivals(window_s=0.02)
    finish(a, 4)
    a.step_done(idle=True, now=10.0)
    a.step_done(idle=False, now=10.005)  # the clients came back and were served
    assert a.expected(10.006) == 0


def test_waiting_stops_once_the_expected_arrive_or_the_first_step_is_full() -> None:
    a = Arrivals(window_s=0.02)
    finish(a, 4)
    a.step_done(idle=True, now=10.0)
    assert a.should_wait(queued=2, queued_tokens=140, budget=512, now=10.001)
    assert not a.should_wait(queued=4, queued_tokens=280, budget=512, now=10.001)
    assert not a.should_wait(queued=2, queued_tokens=600, budget=512, now=10.001)  # they fill the step
    assert not a.should_wait(queued=2, queued_tokens=140, budget=512, now=10.03)  # the window passed
