"""NVIDIA GPUs through NVML (the `pynvml` module of nvidia-ml-py).

Used for what llama.cpp does not tell us: names, temperature, power, utilisation (for
/metrics and `doctor`), and free memory as the driver sees it. No driver, no library, no
GPU: an empty list, never an exception — a CPU-only box is a normal configuration.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .devices import Device

_lock = threading.Lock()
_initialised: bool | None = None  # None: not tried yet; False: NVML unavailable


@dataclass(frozen=True)
class GpuStats:
    index: int
    name: str
    total: int
    free: int
    used: int
    temperature_c: float | None
    power_w: float | None
    utilisation_pct: float | None


def _init() -> bool:
    global _initialised
    with _lock:
        if _initialised is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                _initialised = True
            except Exception:  # library missing, driver missing, no permission: no GPUs
                _initialised = False
        return _initialised


def _optional(fn, *args):  # type: ignore[no-untyped-def]
    """NVML raises NotSupported for some queries on some boards; that is not an error."""
    try:
        return fn(*args)
    except Exception:
        return None


def gpu_stats() -> list[GpuStats]:
    """Every NVIDIA GPU the driver reports, with its sensors; [] without a driver."""
    if not _init():
        return []
    import pynvml

    out: list[GpuStats] = []
    try:
        count = pynvml.nvmlDeviceGetCount()
    except Exception:
        return []
    for i in range(count):
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        except Exception:
            continue
        temp = _optional(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU)
        power = _optional(pynvml.nvmlDeviceGetPowerUsage, h)  # milliwatts
        util = _optional(pynvml.nvmlDeviceGetUtilizationRates, h)
        out.append(
            GpuStats(
                index=i,
                name=name.decode() if isinstance(name, bytes) else str(name),
                total=int(mem.total),
                free=int(mem.free),
                used=int(mem.used),
                temperature_c=float(temp) if temp is not None else None,
                power_w=power / 1000.0 if power is not None else None,
                utilisation_pct=float(util.gpu) if util is not None else None,
            )
        )
    return out


class NvmlHardware:
    """NVIDIA GPUs as NVML sees them (used when llama.cpp's own view is unavailable)."""

    def devices(self) -> list[Device]:
        return [Device(g.index, "cuda", g.name, g.total, g.free) for g in gpu_stats()]
