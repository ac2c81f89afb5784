"""Graceful stop (SIGTERM), forced re-reads (SIGHUP), and watching config files.

Why our own SIGTERM handling: aiohttp's run_app closes the listener first, so clients of a
stopping server see "connection refused". We keep listening and answer 503 `draining`
(with Connection: close) while in-flight requests finish, for at most
`server.drain_timeout`; then the rest are cancelled, models unload, and we exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any, Awaitable, Callable

from ..clock import Clock
from ..errors import Draining
from .notify import Notifier

log = logging.getLogger("appliance.service")

POLL_S = 0.05  # how often the drain looks at the in-flight count
WATCH_INTERVAL_S = 2.0  # how often models.toml's stat is compared


async def wait_idle(in_flight: Callable[[], int], clock: Clock, timeout: float) -> bool:
    """Wait until `in_flight()` is 0 or `timeout` passes; True when it reached 0."""
    deadline = clock.monotonic() + timeout
    while in_flight() > 0:
        now = clock.monotonic()
        if now >= deadline:
            return False
        await clock.sleep_until(min(deadline, now + POLL_S))
    return True


async def drain(
    state: Any,
    notifier: Notifier,
    clock: Clock,
    timeout: float,
    *,
    stop_admitting: Callable[[], None] | None = None,
) -> bool:
    """Enter draining: STOPPING=1, /ready 503, new requests 503 `draining`; then wait for
    in-flight requests up to `timeout`. True when all finished in time."""
    notifier.stopping()
    state.draining = True
    state.ready = False
    if stop_admitting is not None:
        stop_admitting()  # the scheduler refuses new leases (requests already queued fail fast)
    n = state.in_flight
    log.info("draining: %d request(s) in flight, waiting up to %gs", n, timeout)
    done = await wait_idle(lambda: state.in_flight, clock, timeout)
    if not done:
        log.warning("drain timeout: cancelling %d request(s) still in flight", state.in_flight)
        streams = getattr(state, "streams", None)
        if streams:
            from ..api.sse import end_streams

            n = await end_streams(streams, Draining(f"the server is shutting down (drain_timeout of {timeout:g}s passed)"))
            log.info("ended %d stream(s) with a draining error event", n)
    return done


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class FileWatcher:
    """Calls `on_change()` when a file's (inode, size, mtime) changes, checked every
    `interval` on the injected clock (editors replace files: inode counts too)."""

    def __init__(
        self,
        path: Path,
        on_change: Callable[[], Awaitable[None] | None],
        clock: Clock,
        interval: float = WATCH_INTERVAL_S,
    ) -> None:
        self.path, self.on_change, self.clock, self.interval = Path(path), on_change, clock, interval
        self._seen = _signature(self.path)
        self.checks = 0

    async def check(self) -> bool:
        """Compare once; True (after calling on_change) when the file changed."""
        self.checks += 1
        sig = _signature(self.path)
        if sig == self._seen:
            return False
        self._seen = sig
        try:
            res = self.on_change()
            if asyncio.iscoroutine(res):
                await res
        except Exception:  # a bad edit must not stop watching
            log.exception("reloading %s failed", self.path)
        return True

    async def run(self) -> None:
        while True:
            await self.clock.sleep_until(self.clock.monotonic() + self.interval)
            await self.check()


def install_signals(
    loop: asyncio.AbstractEventLoop,
    on_term: Callable[[], None],
    on_hup: Callable[[], None],
) -> Callable[[], None]:
    """SIGTERM and SIGINT start the drain, SIGHUP a re-read; returns an uninstaller."""
    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, on_term)
    loop.add_signal_handler(signal.SIGHUP, on_hup)

    def remove() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    return remove
