"""Where a model goes and what must leave first: a pure function of memory figures.

Given the devices (free memory read just now), the budgets, the residents (what each one is
charged per device and whether it may be evicted now), and the model's need, `plan()`
answers one of: load here after evicting these (least recently used first); wait (only
busy models stand in the way and swap_after has not passed); or impossible (naming need and
what even every allowed eviction would leave). No I/O, no clock: exhaustively testable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

from ..config import ModelConfig
from ..hardware.devices import DeviceKind
from .estimate import Estimate
from .memory import Evictable, Memory, Resident

__all__ = ["Evictable", "Impossible", "Memory", "Placement", "Plan", "Resident", "Wait", "plan"]

@dataclass(frozen=True)
class Placement:
    """What the loader needs: llama.cpp's n_gpu_layers, main_gpu and split mode."""

    device: str  # "cuda:0", "metal:0", "cpu", or "split"
    devices: tuple[int, ...]  # device indices the model uses
    main_gpu: int
    split_mode: Literal["none", "layer"]
    n_gpu_layers: int  # offloaded layers, output included (layer_count() = all)
    all_layers: bool


@dataclass(frozen=True)
class Plan:
    placement: Placement
    estimate: Estimate
    charges: dict[int, int]
    evict: tuple[str, ...]  # idle models to unload first, LRU first
    drain: tuple[str, ...] = ()  # busy models to stop admitting and unload once idle


@dataclass(frozen=True)
class Wait:
    """Only busy models (not yet evictable: swap_after) stand in the way."""


@dataclass(frozen=True)
class Impossible:
    need: int
    available: int
    device: str


NeedFn = Callable[[DeviceKind, int], Estimate]  # (device kind, gpu layers) -> estimate


def _evict_until(
    mem: Memory, indices: Sequence[int], need: int, candidates: Sequence[Resident]
) -> list[Resident] | None:
    """The shortest LRU-first prefix of `candidates` whose eviction frees `need` on `indices`."""
    chosen: list[Resident] = []
    relevant = sorted((r for r in candidates if any(r.charges.get(i, 0) for i in indices)), key=lambda r: r.last_used)

    def avail() -> int:
        return sum(mem.available(i, chosen) for i in indices)

    if avail() >= need:
        return chosen
    for r in relevant:
        chosen.append(r)
        if avail() >= need:
            return chosen
    return None


def _tiers(residents: Sequence[Resident]) -> tuple[list[Resident], list[Resident], list[Resident]]:
    idle = [r for r in residents if r.evictable == "idle"]
    now = idle + [r for r in residents if r.evictable == "busy_ok"]
    later = now + [r for r in residents if r.evictable == "busy_wait"]
    return idle, now, later


def _result_ids(chosen: Sequence[Resident]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(idle models to evict, busy models to drain) among `chosen`."""
    return tuple(r.id for r in chosen if r.evictable == "idle"), tuple(r.id for r in chosen if r.evictable != "idle")


def _result(
    mem: Memory, indices: list[int], est: Estimate, chosen: list[Resident], placement: Placement
) -> Plan:
    idle, busy = _result_ids(chosen)
    if len(indices) == 1:
        charges = {indices[0]: est.total}
    else:  # split: llama.cpp's default tensor_split follows free memory
        room = {i: max(0, mem.available(i, chosen)) for i in indices}
        total_room = sum(room.values()) or 1
        charges = {i: est.total * room[i] // total_room for i in indices}
    return Plan(placement, est, charges, idle, busy)


def plan(
    cfg: ModelConfig,
    layer_count: int,
    need: NeedFn,
    mem: Memory,
    residents: Sequence[Resident],
    gpu_index_error: Callable[[int, int], Exception],
) -> Plan | Wait | Impossible:
    devices = mem.devices
    idle, now, later = _tiers(residents)

    if devices and devices[0].kind == "cpu":
        est = need("cpu", 0)
        pl = Placement("cpu", (devices[0].index,), 0, "none", 0, True)
        return _choose(mem, [[devices[0].index]], est, pl, idle, now, later)

    if cfg.gpu == "split":
        options = [[d.index for d in devices]]
    elif cfg.gpu == "auto":
        options = [[d.index] for d in devices]
    else:
        if cfg.gpu >= len(devices):
            raise gpu_index_error(cfg.gpu, len(devices))
        options = [[cfg.gpu]]

    def placement(indices: list[int], k: int) -> Placement:
        if len(indices) == 1:
            d = next(x for x in devices if x.index == indices[0])
            return Placement(d.label, (d.index,), d.index, "none", k, k >= layer_count)
        return Placement("split", tuple(indices), indices[0], "layer", k, k >= layer_count)

    kind = devices[0].kind if devices else "cpu"
    full = need(kind, layer_count)
    requested = layer_count if cfg.gpu_layers in ("all", "auto") else min(int(cfg.gpu_layers), layer_count)
    est = full if requested == layer_count else need(kind, requested)

    # The requested offload, on the option that evicts least (then leaves most room).
    best: tuple[int, int, Plan] | None = None
    waiting = False
    for opt in options:
        r = _choose(mem, [opt], est, placement(opt, requested), idle, now, later)
        if isinstance(r, Plan):
            key = (len(r.evict) + len(r.drain), -sum(mem.available(i, []) for i in opt))
            if best is None or key < best[:2]:
                best = (*key, r)
        elif isinstance(r, Wait):
            waiting = True
    if best is not None:
        return best[2]
    if waiting:
        return Wait()
    if cfg.gpu_layers != "auto":
        return _impossible(mem, options, est.total, later, placement)

    # gpu_layers = "auto": evict everything allowed first, then offload as many layers as fit.
    # Where more layers would fit once busy models may go (swap_after), wait for that.
    best_k: tuple[int, int, Plan] | None = None
    most_later = -1
    for opt in options:
        k_later = _max_layers(kind, layer_count, need, sum(mem.available(i, later) for i in opt))
        most_later = max(most_later, k_later)
        k_now = _max_layers(kind, layer_count, need, sum(mem.available(i, now) for i in opt))
        if k_now < 0:
            continue
        e = need(kind, k_now)
        chosen = _evict_until(mem, opt, e.total, idle) or _evict_until(mem, opt, e.total, now) or []
        cand = _result(mem, opt, e, chosen, placement(opt, k_now))
        key = (k_now, -len(chosen))
        if best_k is None or key > best_k[:2]:
            best_k = (*key, cand)
    if best_k is not None and most_later <= best_k[0]:
        return best_k[2]
    if most_later >= 0:
        return Wait()
    return _impossible(mem, options, need(kind, 0).total, later, placement)


def _max_layers(kind: DeviceKind, layer_count: int, need: NeedFn, room: int) -> int:
    """The most layers whose need fits in `room` (need grows with layers); -1 if not even 0."""
    lo, hi = -1, layer_count
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if need(kind, mid).total <= room:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _choose(
    mem: Memory,
    options: list[list[int]],
    est: Estimate,
    pl: Placement,
    idle: list[Resident],
    now: list[Resident],
    later: list[Resident],
) -> Plan | Wait | Impossible:
    opt = options[0]
    for tier in (idle, now):
        chosen = _evict_until(mem, opt, est.total, tier)
        if chosen is not None:
            return _result(mem, opt, est, chosen, pl)
    if _evict_until(mem, opt, est.total, later) is not None:
        return Wait()
    avail = sum(mem.available(i, later) for i in opt)
    return Impossible(est.total, max(0, avail), pl.device)


def _impossible(
    mem: Memory,
    options: list[list[int]],
    need: int,
    later: list[Resident],
    placement: Callable[[list[int], int], Placement],
) -> Impossible:
    best = max(options, key=lambda opt: sum(mem.available(i, later) for i in opt))
    avail = sum(mem.available(i, later) for i in best)
    return Impossible(need, max(0, avail), placement(best, 0).device)
