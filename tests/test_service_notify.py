"""sd_notify messages reach a real datagram socket; the watchdog stops pinging when a runner
is stuck inside a llama.cpp call or the event loop lags (injected clock, no sleeps)."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import pytest

from appliance.clock import FakeClock
from appliance.service.notify import (
    Heartbeat,
    Notifier,
    RunnerReading,
    check_progress,
    watchdog_interval,
)


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(10)  # safety net only
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def drain(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(10)
    return out


def test_messages_in_order(notify_socket: socket.socket) -> None:
    n = Notifier()
    assert n.enabled
    n.ready()
    assert n.status("serving: a loaded;  0 queued")
    assert not n.status("serving: a loaded; 0 queued")  # unchanged: not re-sent
    n.extend_timeout(20)
    n.watchdog()
    n.stopping()
    assert drain(notify_socket) == [
        "READY=1",
        "STATUS=serving: a loaded; 0 queued",
        "EXTEND_TIMEOUT_USEC=20000000",
        "WATCHDOG=1",
        "STOPPING=1",
    ]


def test_a_receiver_that_stops_reading_never_blocks_the_sender(notify_socket: socket.socket) -> None:
    """A datagram queue holds only a few messages (net.unix.max_dgram_qlen); past that a
    blocking send would freeze the daemon's event loop. Sends must drop instead."""
    n = Notifier()
    finished = threading.Event()

    def flood() -> None:
        for _ in range(1000):
            n.watchdog()
        finished.set()

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    t.join(timeout=30)  # safety net: a blocked send would never finish
    assert finished.is_set()
    received = drain(notify_socket)
    assert received and set(received) == {"WATCHDOG=1"} and len(received) < 1000


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd may hand out an abstract socket ('@name')."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"appliance-test-{id(sock)}"
    sock.bind("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    Notifier().ready()
    sock.settimeout(10)
    assert sock.recv(100) == b"READY=1"
    sock.close()


async def test_without_notify_socket_nothing_is_sent(notify_socket: socket.socket) -> None:
    """An environment without NOTIFY_SOCKET sends nothing, even though this process's own
    environment names a listening socket (sdnotify would read that one by itself)."""
    n = Notifier(env={})
    assert not n.enabled
    n.ready(); n.watchdog(); n.status("x"); n.extend_timeout(5); n.stopping()  # noqa: E702
    async with n.extending(FakeClock()):
        await asyncio.sleep(0)
    assert drain(notify_socket) == []
    Notifier().ready()  # the socket is live: the same call with NOTIFY_SOCKET arrives
    assert drain(notify_socket) == ["READY=1"]


def test_watchdog_interval() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, pid=7) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def test_check_progress_pure() -> None:
    idle = RunnerReading("a", in_call_since=None, last_progress=50.0)
    busy = RunnerReading("b", in_call_since=95.0)
    assert check_progress(100.0, 0.0, [idle, busy], max_loop_lag=15, max_call=10).healthy
    stuck = RunnerReading("c", in_call_since=80.0)
    v = check_progress(100.0, 0.0, [idle, stuck], max_loop_lag=15, max_call=10)
    assert not v.healthy and "'c'" in v.reason
    v = check_progress(100.0, 16.0, [idle], max_loop_lag=15, max_call=10)
    assert not v.healthy and "lagged" in v.reason


async def until(pred) -> None:  # noqa: ANN001
    """Let the loop run until `pred()` holds (a woken task runs at the loop's next turns)."""
    for _ in range(1000):
        if pred():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def tick(hb: Heartbeat, clock: FakeClock) -> None:
    n = hb.beats
    clock.advance(hb.tick)
    await until(lambda: hb.beats == n + 1)


class FakeRunner:
    """A runner whose thread blocks inside a 'llama.cpp call' until released, reporting
    in_call_since the way the engine does."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.in_call_since: float | None = None
        self.last_progress: float | None = clock.monotonic()
        self.entered, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._call, daemon=True)

    def _call(self) -> None:
        self.in_call_since = self.clock.monotonic()
        self.entered.set()
        self.release.wait()
        self.in_call_since = None
        self.last_progress = self.clock.monotonic()

    def reading(self) -> RunnerReading:
        return RunnerReading("tiny", self.in_call_since, self.last_progress)


async def test_stuck_runner_stops_watchdog(notify_socket: socket.socket) -> None:
    clock = FakeClock()
    runner = FakeRunner(clock)
    hb = Heartbeat(
        Notifier(), clock, lambda: [runner.reading()], lambda: "serving",
        watchdog_every=15.0, status_every=15.0, max_call=60.0,
    )
    task = asyncio.create_task(hb.run())
    try:
        await until(lambda: hb.beats == 1)  # first beat happens at once
        assert drain(notify_socket) == ["WATCHDOG=1", "STATUS=serving"]

        runner.thread.start()
        assert await asyncio.to_thread(runner.entered.wait, 10)
        for _ in range(4):  # 60 s in the call: still within the limit
            await tick(hb, clock)
        assert drain(notify_socket) == ["WATCHDOG=1"] * 4

        for _ in range(3):  # beyond the limit: no more pings
            await tick(hb, clock)
        assert drain(notify_socket) == []
        assert not hb.last_verdict.healthy and "stuck" in hb.last_verdict.reason

        runner.release.set()  # the call returns: pings resume
        await asyncio.to_thread(runner.thread.join, 10)
        await tick(hb, clock)
        assert drain(notify_socket) == ["WATCHDOG=1"]
    finally:
        runner.release.set()
        task.cancel()


async def test_lagging_loop_skips_ping(notify_socket: socket.socket) -> None:
    clock = FakeClock()
    hb = Heartbeat(Notifier(), clock, lambda: [], watchdog_every=15.0)
    assert hb.beat(lag=0.0).healthy
    assert not hb.beat(lag=20.0).healthy
    assert drain(notify_socket) == ["WATCHDOG=1"]


async def test_no_watchdog_without_watchdog_usec(notify_socket: socket.socket) -> None:
    clock = FakeClock()
    hb = Heartbeat(Notifier(), clock, lambda: [], lambda: "starting", watchdog_every=None)
    hb.beat(0.0)
    assert drain(notify_socket) == ["STATUS=starting"]


async def test_extending_while_loading(notify_socket: socket.socket) -> None:
    clock = FakeClock()
    n = Notifier()
    async with n.extending(clock, step=10.0):
        await asyncio.sleep(0)
        clock.advance(10.0)
        await asyncio.sleep(0)
    clock.advance(10.0)
    await asyncio.sleep(0)
    assert drain(notify_socket) == ["EXTEND_TIMEOUT_USEC=20000000"] * 2
