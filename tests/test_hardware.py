"""Hardware probes on this CPU-only machine: no GPU is no error, RAM is the budget."""

from __future__ import annotations

import asyncio

import psutil
import pytest

from appliance.clock import FakeClock, SystemClock
from appliance.config import MemoryConfig
from appliance.errors import ConfigError
from appliance.hardware import FakeHardware, GgmlHardware, NvmlHardware, RamHardware, detect, fixed_budgets, gpu_stats
from appliance.hardware.ggml import DEV_TYPE_CPU, backend_devices


def test_ggml_devices_are_read_through_ctypes() -> None:
    devs = backend_devices()
    assert devs, "llama.cpp always has a CPU device"
    cpu = [d for d in devs if d[0] == DEV_TYPE_CPU]
    assert cpu and cpu[0][4] > 0  # total memory reported
    # this machine's llama-cpp-python is a CPU build: no GPU for the scheduler
    assert GgmlHardware().devices() == [] and GgmlHardware().backend() == "cpu"


def test_no_nvidia_driver_means_no_gpus_not_a_crash() -> None:
    assert gpu_stats() == [] and NvmlHardware().devices() == []


def test_without_gpu_the_device_is_system_ram() -> None:
    (d,) = detect().devices()
    assert (d.kind, d.index, d.label) == ("cpu", 0, "cpu")
    assert 0 < d.free <= d.total == psutil.virtual_memory().total


def test_ram_is_read_fresh_on_every_call() -> None:
    """The reading is injected: the whole machine's free RAM moves with other processes."""
    readings = iter([(8 << 30, 5 << 30), (8 << 30, 3 << 30)])
    hw = RamHardware(read=lambda: next(readings))
    assert [(d.total, d.free) for d in hw.devices()] == [(8 << 30, 5 << 30)]
    assert [(d.total, d.free) for d in hw.devices()] == [(8 << 30, 3 << 30)]


def test_fake_hardware_moves_free_memory() -> None:
    hw = FakeHardware.gpus(24 * 10**9, 24 * 10**9)
    hw.allocate(1, 5 * 10**9)
    assert [d.free for d in hw.devices()] == [24 * 10**9, 19 * 10**9]
    hw.release(1, 5 * 10**9)
    assert hw.devices()[1].free == 24 * 10**9
    assert [d.label for d in hw.devices()] == ["cuda:0", "cuda:1"]


def test_budgets_from_config() -> None:
    hw = FakeHardware.gpus(24 * 10**9, 24 * 10**9)
    assert fixed_budgets(hw.devices(), MemoryConfig()) == [None, None]
    assert fixed_budgets(hw.devices(), MemoryConfig(budget="10GB")) == [10**10, 10**10]
    assert fixed_budgets(hw.devices(), MemoryConfig(budget=["10GB", "20GB"])) == [10**10, 2 * 10**10]
    with pytest.raises(ConfigError) as e:
        fixed_budgets(hw.devices(), MemoryConfig(budget=["10GB"]))
    assert e.value.key == "memory.budget"


async def test_fake_clock_wakes_sleepers_in_order_only_when_advanced() -> None:
    clock = FakeClock(start=0)
    woke: list[str] = []

    async def sleeper(name: str, at: float) -> None:
        await clock.sleep_until(at)
        woke.append(name)

    tasks = [asyncio.create_task(sleeper("late", 10)), asyncio.create_task(sleeper("early", 5))]
    await asyncio.sleep(0)
    assert clock.sleepers == 2
    clock.advance(4.9)
    await asyncio.sleep(0)
    assert woke == []
    clock.advance(10)
    await asyncio.gather(*tasks)
    assert woke == ["early", "late"] and clock.monotonic() == 14.9
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_system_clock_past_deadline_returns_without_suspending() -> None:
    c = SystemClock()
    step = c.sleep_until(c.monotonic() - 1).__await__()
    with pytest.raises(StopIteration):  # done at its first step: it never waited on the loop
        next(step)


async def test_system_clock_returns_only_once_the_deadline_has_come() -> None:
    c = SystemClock()
    for delay in (0.001, 0.01, 0.02):
        deadline = c.monotonic() + delay
        await c.sleep_until(deadline)
        assert c.monotonic() >= deadline


def test_a_lost_worker_reaches_every_runner_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """ggml's abort on the RPC client's thread tells every watching runner; one whose workers
    are alive spends lost_worker's settle time (3 s) making sure, and must not hold back the
    runner whose worker died (its requests hung that long per such runner)."""
    import _thread
    import threading

    affected_told, settled = threading.Event(), threading.Event()
    saw: list[bool] = []

    def alive_elsewhere(message: str) -> None:  # stands for lost_worker settling on live workers
        saw.append(affected_told.wait(30))  # a guard against a hang, not a timing threshold
        settled.set()

    from appliance.hardware import rpc

    monkeypatch.setattr(rpc, "_listeners", [alive_elsewhere, lambda message: affected_told.set()])
    # a thread Python did not start, as ggml-rpc's: the abort callback never returns on it
    _thread.start_new_thread(rpc._on_abort, (b"RPC: remote server crashed",))
    assert settled.wait(60) and saw == [True]
