"""`memory.budget` per device: "auto" (free memory read before each load, minus reserve),
one size for every GPU, or a list with one size per GPU."""

from __future__ import annotations

from ..config import MemoryConfig
from ..errors import ConfigError
from .devices import Device


def fixed_budgets(devices: list[Device], memory: MemoryConfig, file: str = "appliance.toml") -> list[int | None]:
    """The configured budget of each device in order; None where it is "auto".

    A list must name exactly one size per device (RAM counts as the one device on a
    machine without a GPU) — anything else is a config error, not a guess.
    """
    b = memory.budget
    if b == "auto":
        return [None] * len(devices)
    if isinstance(b, int):
        return [b] * len(devices)
    if len(b) != len(devices):
        what = "GPU(s)" if devices and devices[0].kind != "cpu" else "device (system RAM)"
        raise ConfigError(file, "memory.budget", f"lists {len(b)} size(s) but this machine has {len(devices)} {what}")
    return list(b)
