"""What memory there is to load models into: the `Hardware` protocol and its fakes.

The scheduler never asks a driver directly; it calls `hardware.devices()` before every
placement decision (a desktop GPU's free memory moves), so tests inject a `FakeHardware`
whose figures they control.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal, Protocol

import psutil

DeviceKind = Literal["cuda", "metal", "cpu"]


@dataclass(frozen=True)
class Device:
    """One place models can live: a GPU, or system RAM when llama.cpp has no GPU."""

    index: int  # the GPU's index as llama.cpp's main_gpu counts them (0 for RAM)
    kind: DeviceKind
    name: str
    total: int  # bytes
    free: int  # bytes, read when this Device was made

    @property
    def label(self) -> str:
        return "cpu" if self.kind == "cpu" else f"{self.kind}:{self.index}"


class Hardware(Protocol):
    def devices(self) -> list[Device]:
        """Devices models are placed on, with free memory read now (fresh on every call)."""
        ...


class RamHardware:
    """System RAM as the only device: the budget on a machine without a usable GPU.
    `read` gives (total, available) bytes; injected in tests, psutil's reading otherwise."""

    def __init__(self, read: Callable[[], tuple[int, int]] | None = None) -> None:
        self._read = read or _psutil_ram

    def devices(self) -> list[Device]:
        total, available = self._read()
        return [Device(0, "cpu", "system RAM", int(total), int(available))]


def _psutil_ram() -> tuple[int, int]:
    vm = psutil.virtual_memory()
    return vm.total, vm.available


class FakeHardware:
    """Devices with figures a test sets: e.g. one 24 GB card, or two of them.

    `allocate`/`release` move a device's free memory the way a real load/unload would,
    so a fake loader can make the scheduler's "measure after warm-up" see a delta.
    """

    def __init__(self, devices: list[Device]) -> None:
        self._devices = {d.index: d for d in devices}
        self.reads = 0

    @classmethod
    def gpus(cls, *totals: int, kind: DeviceKind = "cuda") -> "FakeHardware":
        return cls([Device(i, kind, f"Fake GPU {i}", t, t) for i, t in enumerate(totals)])

    def devices(self) -> list[Device]:
        self.reads += 1
        return list(self._devices.values())

    def set_free(self, index: int, free: int) -> None:
        self._devices[index] = replace(self._devices[index], free=free)

    def allocate(self, index: int, nbytes: int) -> None:
        d = self._devices[index]
        self.set_free(index, d.free - nbytes)

    def release(self, index: int, nbytes: int) -> None:
        d = self._devices[index]
        self.set_free(index, min(d.total, d.free + nbytes))
