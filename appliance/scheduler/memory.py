"""Memory accounting: what each resident model is charged, what a device can hold, and the
budget invariant.

A model is charged from the moment a load is decided (its plan's estimate, reserved before
the load runs) until its unload has finished (its runner freed), and the charge becomes the
measured footprint once it is loaded. `Memory` is the planner's view (capacity and use per
device); `check_budget` is the one place the invariant "resident footprints never exceed a
fixed budget" is checked, after every scheduling decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence

from ..errors import BudgetExceeded
from ..hardware.devices import Device

Evictable = Literal["idle", "busy_ok", "busy_wait", "never"]


@dataclass(frozen=True)
class Resident:
    """A model holding memory, as the planner sees it."""

    id: str
    charges: dict[int, int]  # bytes charged per device index
    mapped: dict[int, int]  # of those, bytes the OS counts as free (mmap'd weights in RAM)
    evictable: Evictable
    last_used: float


@dataclass
class Memory:
    """Per-device capacity and use, derived from fresh readings and the residents."""

    devices: list[Device]
    capacity: dict[int, int]
    used: dict[int, int] = field(default_factory=dict)

    @classmethod
    def read(cls, devices: Sequence[Device], budgets: Sequence[int | None], reserve: int, residents: Sequence[Resident]) -> "Memory":
        cap: dict[int, int] = {}
        used: dict[int, int] = {}
        for d, budget in zip(devices, budgets):
            ours = sum(r.charges.get(d.index, 0) for r in residents)
            unseen = sum(r.mapped.get(d.index, 0) for r in residents)
            used[d.index] = ours
            if budget is None:  # auto: what is free now, plus what our own models hold
                cap[d.index] = max(0, d.free - reserve + ours - unseen)
            else:
                cap[d.index] = budget
        return cls(list(devices), cap, used)

    def add_worker(self, index: int, free: int, ours_then: int, reserve: int, residents: Sequence[Resident]) -> None:
        """An RPC worker's device (no fixed budget: memory.budget is the head's): what was
        free when it was read, minus reserve, plus what our models held there then
        (`ours_then`); used is what our residents are charged there now."""
        self.used[index] = sum(r.charges.get(index, 0) for r in residents)
        self.capacity[index] = max(0, free - reserve + ours_then)

    def available(self, index: int, freed: Sequence[Resident] = ()) -> int:
        return self.capacity[index] - self.used[index] + sum(r.charges.get(index, 0) for r in freed)


def charged(charges: Iterable[dict[int, int]]) -> dict[int, int]:
    """Bytes charged per device, summed over resident models' charges."""
    total: dict[int, int] = {}
    for c in charges:
        for i, n in c.items():
            total[i] = total.get(i, 0) + n
    return total


def over_budget(charges: Iterable[dict[int, int]], budgets: Sequence[int | None]) -> dict[int, tuple[int, int]]:
    """Devices (by index) whose fixed budget the charges exceed: index -> (charged, budget).

    "auto" budgets (None) have no fixed figure to check; there each load is planned against
    the free memory read just before it."""
    total = charged(charges)
    return {
        i: (total[i], b)
        for i, b in enumerate(budgets)
        if b is not None and total.get(i, 0) > b
    }


def check_budget(charges: Iterable[dict[int, int]], budgets: Sequence[int | None], what: str = "") -> None:
    """Raise BudgetExceeded when resident charges exceed any fixed budget."""
    bad = over_budget(charges, budgets)
    if bad:
        detail = ", ".join(f"device {i}: {c} > {b} bytes" for i, (c, b) in sorted(bad.items()))
        raise BudgetExceeded(f"memory budget exceeded ({detail}){' ' + what if what else ''}")
