"""Memory per device for the console: what is free, what our models hold, and the budget.

The devices are the scheduler's kind (the GPUs llama.cpp offloads to, or system RAM on a
CPU box); NVML adds utilisation and temperature where there is a driver. Readings are kept
for a second, so many open pages cost one reading per second, not one each.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from ..clock import Clock, SystemClock
from ..config import MemoryConfig
from ..errors import ConfigError
from ..hardware import Device, GpuStats, Hardware, fixed_budgets

READING_TTL = 1.0  # seconds a reading is reused


class DeviceReadings:
    def __init__(
        self,
        hardware: Hardware,
        gpu_stats: Callable[[], list[GpuStats]],
        clock: Clock | None = None,
    ) -> None:
        self.hardware = hardware
        self.gpu_stats = gpu_stats
        self.clock = clock or SystemClock()
        self._at: float | None = None
        self._cached: tuple[list[Device], dict[int, GpuStats]] = ([], {})

    def read(self) -> tuple[list[Device], dict[int, GpuStats]]:
        now = self.clock.monotonic()
        if self._at is None or now - self._at >= READING_TTL:
            gpus = {g.index: g for g in self.gpu_stats()}
            self._cached = (self.hardware.devices(), gpus)
            self._at = now
        return self._cached


def device_rows(readings: DeviceReadings, memory: MemoryConfig, models: Iterable[Any]) -> list[dict[str, Any]]:
    """One row per device. `models`: the scheduler's status rows; a resident model counts
    its measured footprint (else its estimate) on its device. The budget is the configured
    size, or for "auto" what a load could use now: free + ours - reserve."""
    devices, gpus = readings.read()
    try:
        budgets = fixed_budgets(devices, memory)
    except ConfigError:  # a wrong-length list is reported at start; show "auto" rather than fail
        budgets = [None] * len(devices)
    ours: dict[str, int] = {}
    for m in models:
        if m.state != "unloaded" and m.device:
            ours[m.device] = ours.get(m.device, 0) + int(m.memory_measured or m.memory_estimated or 0)
    rows = []
    for dev, budget in zip(devices, budgets):
        held = ours.get(dev.label, 0)
        g = gpus.get(dev.index) if dev.kind == "cuda" else None
        rows.append({
            "label": dev.label,
            "name": dev.name,
            "kind": dev.kind,
            "total": dev.total,
            "free": dev.free,
            "models": held,
            "budget": budget if budget is not None else max(0, dev.free + held - memory.reserve),
            "budget_auto": budget is None,
            "utilisation_pct": g.utilisation_pct if g else None,
            "temperature_c": g.temperature_c if g else None,
        })
    return rows
