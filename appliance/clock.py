"""Time as an injected dependency.

keep_alive, queue.max_wait, queue.swap_after and the Retry-After throughput window all
depend on time. Code that needs time takes a `Clock`; the daemon passes `SystemClock`,
tests pass `FakeClock` and advance it, so no test ever sleeps for real.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once `monotonic() >= deadline` (at once if it already is)."""
        ...


class SystemClock:
    """The real monotonic clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        # asyncio may wake a timer up to its clock resolution early: sleep again until it is due
        while (delay := deadline - time.monotonic()) > 0:
            await asyncio.sleep(delay)


class FakeClock:
    """A clock that moves only when a test calls `advance()`.

    Sleepers are woken in deadline order by `advance`; a woken coroutine runs at the event
    loop's next turn, so a test awaits the outcome it expects (a task's result, an event)
    rather than counting loop iterations.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)  # still a suspension point, like a real zero sleep
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._seq), fut))
        await fut

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has come."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    @property
    def sleepers(self) -> int:
        """How many sleeps are pending (cancelled ones excluded)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())
