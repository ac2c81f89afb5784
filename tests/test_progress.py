"""Progress on a pipe: periodic one-line reports with size, percentage, speed and time left,
driven by an injected clock; nothing for short work; a bar only on a terminal."""

from __future__ import annotations

import io

from appliance.progress import LineProgress, byte_progress

MiB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_periodic_lines_then_a_closing_line() -> None:
    out, clock = io.StringIO(), Clock()
    with LineProgress(30 * MiB, "m.gguf", out=out, clock=clock, every=10) as p:
        p.update(MiB)
        assert out.getvalue() == ""  # before the first interval: quiet
        clock.now += 10
        p.update(9 * MiB)
        clock.now += 5
        p.update(MiB)  # within the interval: no line
        clock.now += 5
        p.update(MiB)
    lines = out.getvalue().splitlines()
    assert lines == [
        "m.gguf: 10.0 MiB of 30.0 MiB (33%), 1.0 MiB/s, 20s left",
        "m.gguf: 12.0 MiB of 30.0 MiB (40%), 614.4 KiB/s, 30s left",
        "m.gguf: 12.0 MiB done in 20s (614.4 KiB/s)",
    ]


def test_short_or_failed_work_prints_nothing_and_pipes_get_no_bar() -> None:
    out, clock = io.StringIO(), Clock()
    with LineProgress(MiB, "quick", out=out, clock=clock) as p:
        p.update(MiB)
    assert out.getvalue() == ""
    try:
        with LineProgress(MiB, "cut", out=out, clock=clock, every=1) as p:
            clock.now += 1
            p.update(10)
            raise RuntimeError
    except RuntimeError:
        pass
    assert out.getvalue().splitlines() == ["cut: 10 B of 1.0 MiB (0%), 10 B/s, 104857s left"]
    assert isinstance(byte_progress(1, "x", out=io.StringIO()), LineProgress)
