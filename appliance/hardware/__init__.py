"""GPU inventory and free memory: llama.cpp's own device view (ggml), NVML sensors, RAM.

`detect()` gives the daemon its `Hardware`: the GPUs llama.cpp can offload to, or system
RAM when it has none (a CPU-only build, or no driver) — the scheduler budgets whichever.
"""

from __future__ import annotations

from .budget import fixed_budgets
from .devices import Device, DeviceKind, FakeHardware, Hardware, RamHardware
from .ggml import GgmlHardware
from .nvml import GpuStats, NvmlHardware, gpu_stats


class SystemHardware:
    """The GPUs llama.cpp can use if there are any, else system RAM (decided once)."""

    def __init__(self) -> None:
        self._gpus = GgmlHardware()
        self._ram = RamHardware()
        self.has_gpu = bool(self._gpus.devices())

    def devices(self) -> list[Device]:
        return self._gpus.devices() if self.has_gpu else self._ram.devices()


def detect() -> Hardware:
    return SystemHardware()


__all__ = [
    "Device", "DeviceKind", "FakeHardware", "GgmlHardware", "GpuStats", "Hardware",
    "NvmlHardware", "RamHardware", "SystemHardware", "detect", "fixed_budgets", "gpu_stats",
]
