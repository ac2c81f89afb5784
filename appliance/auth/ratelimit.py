"""Per-key requests-per-minute as token buckets on an injected clock.

A bucket holds up to `rpm` requests and refills at rpm/60 per second, so a key may burst
its whole minute at once but not exceed it on average. Tests pass a FakeClock.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..clock import Clock, SystemClock
from ..errors import RateLimitExceeded


@dataclass
class _Bucket:
    rpm: int
    tokens: float
    stamp: float


class RateLimiter:
    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, rpm: int) -> None:
        """Spend one request of `key`'s budget or raise RateLimitExceeded with Retry-After."""
        if rpm <= 0:
            return
        now = self.clock.monotonic()
        b = self._buckets.get(key)
        if b is None or b.rpm != rpm:  # new key, or its limit was edited
            b = self._buckets[key] = _Bucket(rpm, float(rpm), now)
        rate = rpm / 60.0
        b.tokens = min(float(rpm), b.tokens + (now - b.stamp) * rate)
        b.stamp = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return
        wait = (1.0 - b.tokens) / rate
        raise RateLimitExceeded(
            f"rate limit of {rpm} requests per minute exceeded for key {key!r}",
            retry_after=wait,
        )
