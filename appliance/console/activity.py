"""Recent traffic for the console: requests/s, errors, tok/s and TTFT per model, usage per key.

Fed by the API's on_request hook (one `RequestRecord` per finished request). Rates and
latencies cover a sliding window (the last minute) so the page shows what the box is doing
now; per-key usage counts since the daemon started. The clock is injected so tests move
time instead of sleeping. Prometheus (/metrics) keeps the long-term histograms.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..api.state import RequestRecord
from ..clock import Clock, SystemClock

WINDOW = 60.0  # seconds of requests behind "recent"
MAX_RECENT = 10_000  # a bound on memory whatever the request rate


@dataclass
class KeyUsage:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_seen: float | None = None  # monotonic


class Activity:
    def __init__(self, clock: Clock | None = None, window: float = WINDOW) -> None:
        self.clock = clock or SystemClock()
        self.window = window
        self._recent: deque[tuple[float, RequestRecord]] = deque(maxlen=MAX_RECENT)
        self._keys: dict[str, KeyUsage] = {}

    def on_request(self, record: RequestRecord) -> None:
        """The on_request hook. The console's own page and status stream are not traffic."""
        if record.path == "/" or record.path.startswith("/console/"):
            return
        now = self.clock.monotonic()
        self._recent.append((now, record))
        u = self._keys.setdefault(record.key_name or "-", KeyUsage())
        u.requests += 1
        u.errors += record.status >= 400
        u.prompt_tokens += record.prompt_tokens
        u.completion_tokens += record.completion_tokens
        u.last_seen = now

    def _window(self) -> list[RequestRecord]:
        cutoff = self.clock.monotonic() - self.window
        while self._recent and self._recent[0][0] < cutoff:
            self._recent.popleft()
        return [r for _, r in self._recent]

    def summary(self) -> dict[str, Any]:
        """Totals over the window and, per model, median TTFT and decode rate."""
        recent = self._window()
        per_model: dict[str, dict[str, Any]] = {}
        for model in sorted({r.model for r in recent if r.model}):
            rs = [r for r in recent if r.model == model]
            ttft = [r.ttft_s for r in rs if r.ttft_s is not None]
            tps = [r.decode_tokens_per_s for r in rs if r.decode_tokens_per_s]
            per_model[model] = {
                "requests": len(rs),
                "ttft_s": statistics.median(ttft) if ttft else None,
                "tokens_per_s": statistics.median(tps) if tps else None,
                "completion_tokens": sum(r.completion_tokens for r in rs),
            }
        errors = [r for r in recent if r.status >= 400]
        return {
            "window_s": self.window,
            "requests": len(recent),
            "requests_per_s": len(recent) / self.window,
            "errors": len(errors),
            "last_errors": [
                {"path": r.path, "status": r.status, "code": r.error_code, "key": r.key_name}
                for r in errors[-5:]
            ],
            "models": per_model,
        }

    def keys(self) -> dict[str, dict[str, Any]]:
        """Usage per API key name since start ('-': requests without a key)."""
        now = self.clock.monotonic()
        return {
            name: {
                "requests": u.requests, "errors": u.errors, "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "idle_s": None if u.last_seen is None else now - u.last_seen,
            }
            for name, u in sorted(self._keys.items())
        }
