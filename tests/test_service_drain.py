"""Drain and file watching as units: an injected clock, real files, no sleeps."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from appliance.api.state import AppState
from appliance.clock import FakeClock
from appliance.service.drain import FileWatcher, drain, wait_idle
from appliance.service.logs import JsonFormatter, TextFormatter, configure_logging, log_request
from appliance.service.notify import Notifier


async def until(pred) -> None:  # noqa: ANN001
    for _ in range(1000):
        if pred():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def test_drain_waits_for_in_flight_then_returns() -> None:
    clock, state = FakeClock(), AppState(ready=True, in_flight=2)
    admitted: list[bool] = []
    task = asyncio.create_task(drain(state, Notifier(), clock, 30.0, stop_admitting=lambda: admitted.append(False)))
    await until(lambda: state.draining)
    assert not state.ready and admitted == [False]
    state.in_flight = 0
    clock.advance(0.05)
    assert await task is True


async def test_drain_gives_up_at_the_timeout() -> None:
    clock, state = FakeClock(), AppState(ready=True, in_flight=1)
    task = asyncio.create_task(drain(state, Notifier(), clock, 30.0))
    await until(lambda: clock.sleepers == 1)
    while not task.done():
        clock.advance(1.0)
        await until(lambda: task.done() or clock.sleepers == 1)
    assert await task is False
    assert clock.monotonic() >= 1000.0 + 30.0


async def test_wait_idle_returns_at_once_when_idle() -> None:
    assert await wait_idle(lambda: 0, FakeClock(), 5.0)


async def test_file_watcher_sees_edits_and_replacements(tmp_path: Path) -> None:
    f = tmp_path / "models.toml"
    f.write_text("a = 1\n")
    clock, calls = FakeClock(), []
    w = FileWatcher(f, lambda: calls.append(f.read_text()), clock, interval=2.0)
    task = asyncio.create_task(w.run())
    try:
        await until(lambda: clock.sleepers == 1)
        clock.advance(2.0)
        await until(lambda: w.checks == 1)
        assert calls == []  # unchanged
        f.write_text("a = 2\nb = 3\n")  # edited in place (size changes)
        clock.advance(2.0)
        await until(lambda: w.checks == 2)
        assert calls == ["a = 2\nb = 3\n"]
        tmp = tmp_path / "new"
        tmp.write_text("a = 4\nb = 3\n")  # same size, replaced by rename (inode changes)
        os.replace(tmp, f)
        clock.advance(2.0)
        await until(lambda: w.checks == 3)
        assert calls[-1] == "a = 4\nb = 3\n"
    finally:
        task.cancel()


async def test_a_failing_reload_keeps_watching(tmp_path: Path) -> None:
    f = tmp_path / "models.toml"
    f.write_text("x")

    def boom() -> None:
        raise ValueError("bad edit")

    w = FileWatcher(f, boom, FakeClock())
    f.write_text("xy")
    assert await w.check() is True  # logged, not raised
    assert await w.check() is False


def _record(**kw):  # noqa: ANN003, ANN202
    from appliance.api.state import RequestRecord

    base = dict(request_id="req_abc", method="POST", path="/v1/chat/completions", key_name="alice",
                model="tiny", status=200, prompt_tokens=12, completion_tokens=5, latency_s=0.1234)
    base.update(kw)
    return RequestRecord(**base)


def test_request_log_text_and_json(capsys) -> None:  # noqa: ANN001
    import io
    import json
    import logging

    for fmt in ("text", "json"):
        buf = io.StringIO()
        configure_logging(fmt, stream=buf)
        log_request(_record())
        logging.getLogger("appliance.x").warning("plain %s", "message")
        lines = buf.getvalue().splitlines()
        assert len(lines) == 2
        if fmt == "json":
            req, plain = (json.loads(ln) for ln in lines)
            assert req["request_id"] == "req_abc" and req["key"] == "alice" and req["model"] == "tiny"
            assert req["status"] == 200 and req["prompt_tokens"] == 12 and req["completion_tokens"] == 5
            assert req["latency_s"] == 0.1234
            assert plain["message"] == "plain message" and plain["level"] == "warning"
        else:
            assert "req_abc" in lines[0] and "key=alice" in lines[0] and "tokens=12+5" in lines[0]
    configure_logging("text")
    assert isinstance(JsonFormatter(), logging.Formatter) and isinstance(TextFormatter(), logging.Formatter)
