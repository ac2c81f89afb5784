"""A scheduler on a fake GPU: injected hardware figures, clock, estimator and runners.

Loads run inline on the event loop (no threads), so a test's `settle()` — letting the loop
run until no task is ready — is deterministic; time moves only through `clock.advance()`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from appliance.clock import FakeClock
from appliance.config import ApplianceConfig, Catalog, ModelConfig
from appliance.hardware.devices import DeviceKind, FakeHardware
from appliance.scheduler import Estimate, Footprints, Placement, Scheduler

GB = 1000**3


class FakeEstimator:
    """Each model needs `sizes[id]` bytes with all of its `layers` offloaded, linearly less
    with fewer layers (the way weights and KV scale)."""

    def __init__(self, sizes: dict[str, int], layers: int = 10) -> None:
        self.sizes, self.layers = sizes, layers

    def layer_count(self, paths: Sequence[Path]) -> int:
        return self.layers

    def estimate(self, paths: Sequence[Path], cfg: ModelConfig, *, gpu_layers: int, device: DeviceKind) -> Estimate:
        full = self.sizes[Path(paths[0]).stem]
        if device == "cpu":
            return Estimate(full, 0, 0)
        k = max(0, min(gpu_layers, self.layers))
        return Estimate(full * k // self.layers, 0, 0)


@dataclass(eq=False)
class FakeRunner:
    model_id: str
    placement: Placement
    n_slots: int
    charged: dict[int, int]
    hw: FakeHardware
    closed: bool = False
    busy_slots: int = 0
    lost: bool = False

    def warmup(self) -> None:
        pass

    def close(self) -> None:
        assert not self.closed, "closed twice"
        self.closed = True
        for i, n in self.charged.items():
            self.hw.release(i, n)


@dataclass
class Harness:
    sched: Scheduler
    clock: FakeClock
    hw: FakeHardware
    est: FakeEstimator
    runners: list[FakeRunner] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)  # seconds of fake time per load/unload
    real_sizes: dict[str, int] = field(default_factory=dict)

    def state(self, mid: str) -> str:
        return self.sched.status(mid).state

    def loaded(self) -> set[str]:
        return {s.id for s in self.sched.snapshot() if s.state == "loaded"}


def make(
    tmp_path: Path,
    sizes: dict[str, int],
    *,
    gpus: Sequence[int] = (24 * GB,),
    models: dict[str, dict[str, Any]] | None = None,
    memory: dict[str, Any] | None = None,
    queue: dict[str, Any] | None = None,
    layers: int = 10,
    real_sizes: dict[str, int] | None = None,
    footprints: Footprints | None = None,
    config_path: str | None = None,
    mmproj: dict[str, Path] | None = None,
    workers: Callable[[str], list[tuple[str, int, int]]] | None = None,
) -> Harness:
    """A scheduler over models named by `sizes` (bytes each), on fake GPUs of `gpus` bytes."""
    models = models or {}
    cat = {
        mid: ModelConfig(source=f"file:///models/{mid}.gguf", **{"parallel": 2, **models.get(mid, {})})
        for mid in sizes
    }
    config = ApplianceConfig.model_validate(
        {
            "store": {"path": str(tmp_path / "store")},
            "memory": {"reserve": "1GB", **(memory or {})},
            "queue": {"max_waiting": 8, "max_wait": "120s", "swap_after": "2s", **(queue or {})},
        }
    )
    hw = FakeHardware.gpus(*gpus)
    clock = FakeClock()
    est = FakeEstimator(sizes, layers)
    h: Harness

    def loader(mid: str, cfg: ModelConfig, paths: list[Path], pl: Placement) -> FakeRunner:
        real = h.real_sizes.get(mid, sizes[mid])
        frac = pl.n_gpu_layers / layers if not pl.all_layers else 1.0
        total = int(real * frac)
        charged = {i: total // len(pl.devices) for i in pl.devices}
        if cfg.rpc:  # split with RPC workers: only the head's share is allocated here, as planned
            planned = h.sched.status(mid).charges
            charged = {i: int(planned.get(f"cuda:{i}", 0) * real / sizes[mid]) for i in pl.devices}
        for i, n in charged.items():
            hw.allocate(i, n)
        r = FakeRunner(mid, pl, cfg.parallel, charged, hw)
        h.runners.append(r)
        h.events.append(f"load {mid}")
        return r

    async def run_blocking(fn: Callable[..., Any], *args: Any) -> Any:
        if getattr(fn, "__name__", "") == "close":
            mid = fn.__self__.model_id  # type: ignore[attr-defined]
            h.events.append(f"unload {mid}")
            if mid in h.delays:
                await clock.sleep_until(clock.monotonic() + h.delays[mid])
        elif args and isinstance(args[0], str):
            if args[0] in h.gates:
                await h.gates[args[0]].wait()
            if args[0] in h.delays:
                await clock.sleep_until(clock.monotonic() + h.delays[args[0]])
        return fn(*args)

    sched = Scheduler(
        config,
        Catalog(cat, tmp_path / "models.toml"),
        store_paths=lambda mid, cfg: [Path(f"/models/{mid}.gguf")],
        loader=loader,
        store_mmproj=lambda mid, cfg: (mmproj or {}).get(mid),
        hardware=hw,
        clock=clock,
        estimator=est,
        footprints=footprints if footprints is not None else Footprints(tmp_path / "store" / "footprints.json"),
        rss=lambda: 0,
        run_blocking=run_blocking,
        config_path=config_path,
        strict=True,  # the budget invariant raises after any decision that breaks it
        workers=workers,  # an RPC worker's devices, (label, free, total): faked, like the GPUs
    )
    h = Harness(sched, clock, hw, est, real_sizes=dict(real_sizes or {}))
    return h


async def settle(rounds: int = 50) -> None:
    """Let every ready task run (loads are inline, so this reaches a quiet state)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def use(h: Harness, mid: str, key: str = "k", slots: int = 1) -> None:
    """One request that starts and finishes at once."""
    async with h.sched.lease(mid, key, slots):
        pass


class Holder:
    """A request that holds its lease until the test lets it go."""

    def __init__(self, h: Harness, mid: str, key: str = "k", slots: int = 1) -> None:
        self.release = asyncio.Event()
        self.admitted = asyncio.Event()
        self.runner: Any = None
        self.task = asyncio.create_task(self._run(h, mid, key, slots))

    async def _run(self, h: Harness, mid: str, key: str, slots: int) -> None:
        async with h.sched.lease(mid, key, slots) as r:
            self.runner = r
            self.admitted.set()
            await self.release.wait()

    async def done(self) -> None:
        self.release.set()
        await self.task
