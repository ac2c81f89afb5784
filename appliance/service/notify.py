"""systemd readiness, status and watchdog (sd_notify through the `sdnotify` package).

Why a watchdog at all: a llama.cpp call that hangs (a driver fault, a wedged CUDA kernel)
leaves the process alive but useless, and nothing outside can tell. systemd restarts us
when WATCHDOG=1 stops arriving, so we send it only while the event loop and every engine
thread make progress (`check_progress`, a pure function so tests need no real time).

Without NOTIFY_SOCKET (run by hand, under launchd, in tests) nothing is sent and nothing
else changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterable, Mapping

import sdnotify

from ..clock import Clock

log = logging.getLogger("appliance.service")

# A llama.cpp call running longer than this counts as stuck. A decode step of a large
# prompt chunk on a slow CPU takes seconds, a model load (if the engine reports it as a
# call) tens of seconds; two minutes is far beyond any healthy call.
DEFAULT_MAX_CALL_S = 120.0


class Notifier:
    """Sends sd_notify messages; every method is a no-op without NOTIFY_SOCKET."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self._sd = sdnotify.SystemdNotifier() if self.enabled else None
        if self._sd is not None and self._sd.socket is not None:
            # Never block the event loop on a receiver that stopped reading (a full queue):
            # drop the message instead, as libsystemd's sd_notify does (MSG_DONTWAIT).
            self._sd.socket.setblocking(False)
        self._last_status: str | None = None

    def send(self, message: str) -> None:
        if self._sd is not None:
            self._sd.notify(message)

    def ready(self) -> None:
        self.send("READY=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def reloading(self) -> None:
        self.send("RELOADING=1")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for more start (or stop) time: systemd waits `seconds` from now."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def status(self, text: str) -> bool:
        """Send STATUS= only when it changed (it shows in `systemctl status`); True if sent."""
        text = " ".join(text.split())  # one line
        if text == self._last_status:
            return False
        self._last_status = text
        self.send(f"STATUS={text}")
        return True

    @contextlib.asynccontextmanager
    async def extending(self, clock: Clock, step: float = 10.0) -> AsyncIterator[None]:
        """While the body runs (pinned-model loads), keep extending the start timeout."""

        async def keep_extending() -> None:
            while True:
                self.extend_timeout(2 * step)
                await clock.sleep_until(clock.monotonic() + step)

        task = asyncio.create_task(keep_extending()) if self.enabled else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between pings: half of systemd's WatchdogSec, None when the watchdog is off."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner and int(owner) != (os.getpid() if pid is None else pid):
        return None  # meant for another process (we were started by a wrapper)
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 / 2 if value > 0 else None


@dataclass(frozen=True)
class RunnerReading:
    """What the watchdog needs from one engine runner (monotonic seconds)."""

    model: str
    in_call_since: float | None  # a llama.cpp call started then and has not returned; None: idle
    last_progress: float | None = None  # last completed decode step (informational)


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reason: str = ""


def check_progress(
    now: float,
    loop_lag: float,
    runners: Iterable[RunnerReading],
    *,
    max_loop_lag: float,
    max_call: float = DEFAULT_MAX_CALL_S,
) -> Verdict:
    """Healthy when the loop woke on time (within `max_loop_lag`) and no runner has been
    inside one llama.cpp call for more than `max_call` seconds."""
    if loop_lag > max_loop_lag:
        return Verdict(False, f"event loop lagged {loop_lag:.1f}s (limit {max_loop_lag:g}s)")
    for r in runners:
        if r.in_call_since is not None and now - r.in_call_since > max_call:
            return Verdict(
                False,
                f"runner {r.model!r} stuck in a llama.cpp call for {now - r.in_call_since:.0f}s "
                f"(limit {max_call:g}s)",
            )
    return Verdict(True)


class Heartbeat:
    """One periodic task: WATCHDOG=1 when `check_progress` says so, STATUS= on change.

    `readings` returns the runners' states at each tick; `status` the STATUS= text.
    """

    def __init__(
        self,
        notifier: Notifier,
        clock: Clock,
        readings: Callable[[], Iterable[RunnerReading]],
        status: Callable[[], str] | None = None,
        *,
        watchdog_every: float | None = None,
        status_every: float = 5.0,
        max_call: float = DEFAULT_MAX_CALL_S,
    ) -> None:
        self.notifier, self.clock = notifier, clock
        self.readings, self.status = readings, status
        self.watchdog_every = watchdog_every
        self.tick = min(watchdog_every, status_every) if watchdog_every else status_every
        # A loop that wakes later than another full interval would let systemd's timer
        # (2 intervals) run out on the next hiccup: call that unhealthy.
        self.max_loop_lag = watchdog_every if watchdog_every else float("inf")
        self.max_call = max_call
        self.pings = 0
        self.beats = 0
        self.last_verdict = Verdict(True)

    def beat(self, lag: float) -> Verdict:
        """One tick: decide, ping or not, update STATUS. Called by `run`; tests call it too."""
        now = self.clock.monotonic()
        verdict = check_progress(
            now, lag, list(self.readings()), max_loop_lag=self.max_loop_lag, max_call=self.max_call
        )
        if self.watchdog_every is not None:
            if verdict.healthy:
                self.notifier.watchdog()
                self.pings += 1
            elif verdict != self.last_verdict:
                log.error("watchdog: not pinging systemd: %s", verdict.reason)
        self.last_verdict = verdict
        self.beats += 1
        if self.status is not None:
            with contextlib.suppress(Exception):  # a status line must never stop the watchdog
                self.notifier.status(self.status())
        return verdict

    async def run(self) -> None:
        due = self.clock.monotonic()
        while True:
            lag = max(0.0, self.clock.monotonic() - due)
            self.beat(lag)
            due = self.clock.monotonic() + self.tick
            await self.clock.sleep_until(due)
