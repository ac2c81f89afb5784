"""Progress for long byte work (pull, verify, import, bundles): tqdm's bar with speed and ETA
on a terminal; on a pipe (systemd's journal, a script, CI) one line on stderr every
`INTERVAL_S` seconds and one at the end of work that took that long, since a bar there is
either nothing or noise.

The clock is injected so tests see the periodic lines without waiting.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Protocol, TextIO

from tqdm import tqdm

from .units import format_size

INTERVAL_S = 10.0


class Progress(Protocol):
    def update(self, n: int = 1) -> object: ...

    def close(self) -> None: ...


class LineProgress:
    """Periodic one-line reports: `name: 12.0 MiB of 30.0 MiB (40%), 2.5 MiB/s, 7s left`."""

    def __init__(
        self, total: int | None, desc: str, initial: int = 0, *, out: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic, every: float | None = None,
    ) -> None:
        self.total, self.desc, self.done, self.start_done = total, desc, initial, initial
        self.out, self.clock = out or sys.stderr, clock
        self.every = INTERVAL_S if every is None else every
        self.started = self.last = clock()
        self.closed = False
        self.reported = False  # a periodic line was written

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self.reported = True
            self._line(now, final=False)

    def close(self) -> None:
        """The closing line, for work long enough to have reported (short work stays quiet)."""
        if not self.closed and self.reported:
            self._line(self.clock(), final=True)
        self.closed = True

    def _line(self, now: float, final: bool) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        done = format_size(self.done)
        if final:
            text = f"{self.desc}: {done} done in {elapsed:.0f}s ({format_size(rate)}/s)"
        else:
            text = f"{self.desc}: {done}"
            if self.total:
                text += f" of {format_size(self.total)} ({100 * self.done / self.total:.0f}%)"
            text += f", {format_size(rate)}/s"
            if self.total and rate > 0:
                text += f", {max(0.0, (self.total - self.done) / rate):.0f}s left"
        self.out.write(text + "\n")
        self.out.flush()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:  # the error says what happened; no "done" line
            self.closed = True
        self.close()


class _Silent:
    def update(self, n: int = 1) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def byte_progress(total: int | None, desc: str, initial: int = 0, enabled: bool = True,
                  out: TextIO | None = None) -> tqdm | LineProgress | _Silent:
    """A bar on a terminal, periodic lines on a pipe, nothing when disabled (`--quiet`)."""
    out = out or sys.stderr
    if not enabled:
        return _Silent()
    if out.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                    file=out, leave=False)
    return LineProgress(total, desc, initial, out=out)
