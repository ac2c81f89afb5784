"""Placement over RPC workers: the model's estimate split across the head and the workers'
devices in the proportion the loader splits layers, and the fit checked on every device.

The loader (engine/params.py) offloads `gpu_layers` layers (all for "all"/"auto") and splits
them over the workers' devices and the local GPUs by free memory; the rest stays on the
head's CPU. So on a RAM-only head each worker device is charged
`total x offloaded/layers x its free / all workers' free` and RAM the rest; on a GPU head the
estimate of the offloaded layers is split over the workers and every local GPU by free
memory (the CPU's share is not charged, as with any partial offload). Pure: no I/O.
"""

from __future__ import annotations

from typing import Sequence

from ..config import ModelConfig
from .memory import Memory, Resident
from .placement import Impossible, NeedFn, Placement, Plan, Wait, _result_ids, _tiers
from .workermem import WorkerDevice


def shares(total: int, offloaded: int, layers: int, head: Sequence[tuple[int, int]], workers: Sequence[WorkerDevice],
           ram_head: bool) -> dict[int, int]:
    """Bytes per device: `head` is (index, free) of the head's devices (RAM alone, or its GPUs)."""
    off = total * min(offloaded, layers) // max(layers, 1) if ram_head else total
    split = [(w.index, w.free) for w in workers] + ([] if ram_head else list(head))
    weight = sum(max(f, 1) for _, f in split)
    out = {i: off * max(f, 1) // weight for i, f in split}
    if ram_head:
        out[head[0][0]] = total - sum(out.values())
    else:  # rounding: the remainder to the first device
        out[split[0][0]] += off - sum(out.values())
    return out


def _fits(mem: Memory, charges: dict[int, int], freed: Sequence[Resident]) -> int | None:
    """The first device (by index) where `charges` do not fit once `freed` are gone, else None."""
    return next((i for i in sorted(charges) if charges[i] > mem.available(i, freed)), None)


def _evict_for(mem: Memory, charges: dict[int, int], candidates: Sequence[Resident]) -> list[Resident] | None:
    """The shortest LRU-first prefix of `candidates` (holding any of the devices) that makes room."""
    chosen: list[Resident] = []
    if _fits(mem, charges, chosen) is None:
        return chosen
    for r in sorted((r for r in candidates if any(r.charges.get(i, 0) for i in charges)), key=lambda r: r.last_used):
        chosen.append(r)
        if _fits(mem, charges, chosen) is None:
            return chosen
    return None


def plan_with_workers(cfg: ModelConfig, layer_count: int, need: NeedFn, mem: Memory, residents: Sequence[Resident],
                      workers: Sequence[WorkerDevice]) -> Plan | Wait | Impossible:
    """Load on the head and the workers together; Wait while only busy models stand in the
    way on some device; Impossible naming the first device short even with every allowed
    eviction (a worker by its label)."""
    devices = mem.devices
    ram_head = not devices or devices[0].kind == "cpu"
    offloaded = layer_count if cfg.gpu_layers in ("all", "auto") else min(int(cfg.gpu_layers), layer_count)
    head = [(d.index, d.free) for d in devices[:1]] if ram_head else [(d.index, d.free) for d in devices]
    if ram_head:
        est = need("cpu", 0)
        pl = Placement("cpu", (head[0][0],), 0, "none", 0, True)
    else:
        est = need(devices[0].kind, offloaded)
        idx = tuple(i for i, _ in head)
        pl = Placement("split", idx, idx[0], "layer", offloaded, offloaded >= layer_count)
    charges = shares(est.total, offloaded, layer_count, head, workers, ram_head)
    idle, now, later = _tiers(residents)
    for tier in (idle, now):
        chosen = _evict_for(mem, charges, tier)
        if chosen is not None:
            return Plan(pl, est, charges, *_result_ids(chosen))
    if _evict_for(mem, charges, later) is not None:
        return Wait()
    short = _fits(mem, charges, later)
    assert short is not None
    labels = {w.index: w.label for w in workers} | {d.index: d.label for d in devices}
    return Impossible(charges[short], max(0, mem.available(short, later)), labels.get(short, str(short)))
