"""The scheduler: which runners exist, who may use them, and when they come and go.

One owner of state, in the style of Ollama's scheduler: every field below is read and
written only on the event loop, and every decision is taken in one synchronous method,
`_schedule()`, which runs after each event (a request arrives or leaves, a load or unload
finishes, a timer fires). It admits waiters, expires them, and starts at most one residency
operation (unloads, then one load) at a time. Loaders, hardware probes, the clock and the
estimator are injected, so all of this runs in tests without a GPU and without real time.
Blocking work (llama.cpp loads, warm-ups, frees) runs in threads; swapping never touches a
runner that has a lease out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Literal, Protocol, Sequence

import psutil

from ..clock import Clock, SystemClock
from ..config import ApplianceConfig, Catalog, ModelConfig
from ..engine.protocol import EngineRunner
from ..errors import (
    ApplianceError,
    BudgetExceeded,
    ConfigError,
    Draining,
    EngineError,
    InsufficientMemory,
    InvalidRequest,
    ModelNotFound,
    QueueFull,
    QueueTimeout,
    WorkerUnreachable,
)
from ..hardware.budget import fixed_budgets
from ..hardware.devices import Device, DeviceKind, Hardware
from ..units import format_size
from .admission import Waiter
from .decide import Decision, UnloadReason, decide
from .estimate import Estimate, Estimator, GGUFEstimator, projector_need
from .footprints import Footprints, footprint_key
from .lifecycle import ModelEntry, RunnerLike
from .memory import Memory, Resident, check_budget
from .placement import Impossible, Placement, Plan, Wait, plan
from .workermem import WORKER_INDEX_BASE, DeviceReader, WorkerDevice, WorkerMemory, read_devices
from .workers import plan_with_workers

log = logging.getLogger("appliance.scheduler")

State = Literal["unloaded", "loading", "loaded", "unloading"]  # as /admin/models shows it
THROUGHPUT_WINDOW = 60.0  # seconds of completions used for Retry-After
DEFAULT_RETRY_AFTER = 5.0  # when a model has no recent completions
_SHA_IN_NAME = re.compile(r"sha256-([0-9a-f]{64})")


class SchedulerEvents(Protocol):
    """What the scheduler reports as it happens (service/metrics.py's Metrics fits this).

    `model_evicted` is an unload to make room for another model (idle LRU eviction, or a busy
    model drained after swap_after); keep_alive, admin, catalog-removal and shutdown unloads
    are not evictions. `queue_waited` is one sample per admitted request (0 when admitted at
    once; admin loads are not requests). Called on the event loop; must not block.
    """

    def model_loaded(self, model: str, seconds: float | None, ok: bool = True) -> None: ...

    def model_evicted(self, model: str) -> None: ...

    def queue_waited(self, model: str, seconds: float) -> None: ...


class NoEvents:
    """The default sink: reports go nowhere."""

    def model_loaded(self, model: str, seconds: float | None, ok: bool = True) -> None:
        pass

    def model_evicted(self, model: str) -> None:
        pass

    def queue_waited(self, model: str, seconds: float) -> None:
        pass


Loader = Callable[[str, ModelConfig, list[Path], Placement], RunnerLike]
StorePaths = Callable[[str, ModelConfig], "list[Path] | None"]
StoreMmproj = Callable[[str, ModelConfig], "Path | None"]  # a model's image projector, if pulled


@dataclass
class ModelStatus:
    """One row of /admin/models."""

    id: str
    state: State
    memory_estimated: int | None
    memory_measured: int | None
    device: str | None
    gpu_layers: int | None
    slots_busy: int
    slots_total: int
    queue_depth: int
    last_used: float | None  # Unix time
    idle_seconds: float | None
    sha256: str | None
    source: str
    pinned: bool
    unload_at: float | None = None  # Unix time its keep_alive unloads it, if idle and loaded; None: not due
    workers: list[str] = field(default_factory=list)  # RPC `host:port`s its layers are split over
    charges: dict[str, int] = field(default_factory=dict)  # bytes charged per device label, while resident

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


_Model = ModelEntry  # the scheduler's per-model record (lifecycle.py)


class Scheduler:
    """Residency (load, evict, keep_alive) and admission (fair bounded queues) for all models.

    All methods must be called on the event loop the scheduler was started on.
    """

    def __init__(
        self,
        config: ApplianceConfig,
        catalog: Catalog,
        *,
        store_paths: StorePaths,
        loader: Loader,
        store_mmproj: StoreMmproj | None = None,
        hardware: Hardware,
        clock: Clock | None = None,
        estimator: Estimator | None = None,
        footprints: Footprints | None = None,
        rss: Callable[[], int] | None = None,
        run_blocking: Callable[..., Awaitable[Any]] | None = None,
        events: SchedulerEvents | None = None,
        config_path: str | Path | None = None,
        strict: bool = False,
        workers: DeviceReader | None = None,
    ) -> None:
        self.config = config
        # strict: a broken budget invariant raises (tests); otherwise it is logged as an error.
        self._strict = strict
        # Named in config errors (memory.budget lives there); None: no file, defaults only.
        self._config_file = str(config_path) if config_path is not None else "appliance.toml"
        self.catalog = catalog
        self._store_paths = store_paths
        self._store_mmproj = store_mmproj
        self._loader = loader
        self._hw = hardware
        self.clock: Clock = clock or SystemClock()
        self._estimator: Estimator = estimator or GGUFEstimator()
        self._footprints = footprints if footprints is not None else Footprints(config.store.path / "footprints.json")
        self._run_blocking = run_blocking or asyncio.to_thread  # tests run loaders inline
        self._rss = rss or (lambda: int(psutil.Process().memory_info().rss))
        # Public so the service layer can attach its Metrics after building the daemon.
        self.events: SchedulerEvents = events or NoEvents()
        self._models: dict[str, _Model] = {mid: _Model(mid, cfg) for mid, cfg in catalog.models.items()}
        self._paths: dict[str, list[Path]] = {}
        self._op: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None
        self._timer_at: float | None = None
        self._draining = False
        self._stopping = False
        self._idle_event: asyncio.Event | None = None
        self._ready: set[str] = set()  # models whose header is cached: plannable on the loop
        self._preparing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._n_devices: int | None = None
        # RPC workers' free memory, read in threads (never on the loop), cached per worker.
        self._workers = WorkerMemory(self.clock, self._run_blocking, workers or read_devices, self._schedule)
        self._labels: dict[int, str] = {}  # local device index -> label
        # Head-side memory of runners abandoned when their worker died (never freed until
        # restart): charged as residents that cannot be evicted, so the budget stays honest.
        self._stranded: dict[str, dict[int, int]] = {}

    # --- public API -------------------------------------------------------------------

    async def start(self) -> None:
        """Check the config against this machine's devices and that the pinned models fit
        together (else ConfigError, exit 2), then load them."""
        self._check_devices()
        pinned = [m for m in self._models.values() if m.cfg.pinned]
        for m in pinned:
            await self._prepare_now(m)
        for m in pinned:  # workers' memory, read before the (synchronous) fit check
            if self._workers_of(m.cfg):
                await self._workers.refresh(self._workers_of(m.cfg), self._ours)
        self._check_pinned_fit(pinned)
        for m in pinned:
            await self.load(m.id)
        self._prepare_all(list(self._models.values()))

    def drain(self) -> None:
        """Refuse new requests (503 draining); waiting and running ones go on."""
        self._draining = True

    async def stop(self, *, wait: bool = True) -> None:
        """Drain, fail queued requests, wait for running ones (if `wait`), unload everything."""
        self.drain()
        for m in self._models.values():
            for w in m.queue.take_all():
                self._fail(w, Draining("the server is shutting down"))
        if wait:
            while any(m.leases for m in self._models.values()):
                self._idle_event = asyncio.Event()
                await self._idle_event.wait()
        self._stopping = True
        if self._timer:
            self._timer.cancel()
        while self._op is not None:
            await asyncio.shield(self._op)
        for t in list(self._tasks):
            t.cancel()
        self._workers.cancel()
        for m in list(self._models.values()):
            if m.state in ("loaded", "draining"):
                await self._unload(m, "shutdown")

    def runners(self) -> dict[str, RunnerLike]:
        """Model id -> runner of every model that has one (loaded, or unloading): the
        watchdog reads their progress."""
        return {m.id: m.runner for m in self._models.values() if m.runner is not None}

    @contextlib.asynccontextmanager
    async def lease(self, model: str, key: str, slots: int = 1) -> AsyncIterator[RunnerLike]:
        """Wait for a turn on `model` (an id or alias) and hold `slots` of its runner's slots.

        Raises ModelNotFound, InvalidRequest (slots > parallel), QueueFull (429),
        QueueTimeout (503), InsufficientMemory (503), Draining (503), or a load failure.
        """
        m, runner = await self.acquire(model, key, slots)
        try:
            yield runner
        finally:
            self.release(m, slots)

    async def acquire(self, model: str, key: str, slots: int = 1) -> tuple[_Model, RunnerLike]:
        """`lease()` without the context manager: pair every success with `release()`."""
        if self._draining:
            raise Draining("the server is shutting down")
        m = self._resolve(model)
        if slots > m.parallel:
            raise InvalidRequest(
                f"n={slots} exceeds model {m.id!r}'s parallel = {m.parallel}", param="n"
            )
        now = self.clock.monotonic()
        if m.admitting and len(m.queue) == 0 and m.busy_slots + slots <= m.parallel:
            self._grant(m, slots)
            if slots:
                self._emit(lambda e: e.queue_waited(m.id, 0.0))
            assert m.runner is not None
            return m, m.runner
        if len(m.queue) >= self.config.queue.max_waiting:
            ra = self._retry_after(m)
            victim = m.queue.make_room(key, self.config.queue.max_waiting)  # fair shares of the room
            if victim is not None:
                self._fail(victim, QueueFull(
                    f"model {m.id!r}: this key holds more than its share of queue.max_waiting; retry later",
                    retry_after=ra))
        if len(m.queue) >= self.config.queue.max_waiting:
            raise QueueFull(
                f"model {m.id!r} has {len(m.queue)} requests waiting (queue.max_waiting); retry later",
                retry_after=ra,
            )
        if m.state == "unloaded" and m.id not in self._paths:
            self._locate(m)
        fut: asyncio.Future[RunnerLike] = asyncio.get_running_loop().create_future()
        w = Waiter(key, slots, now, now + self.config.queue.max_wait, fut)
        m.queue.push(w)
        self._schedule()
        try:
            return m, await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(m, slots)  # admitted in the same turn the client went away
            else:
                m.queue.remove(w)
            self._schedule()
            raise

    def release(self, m: _Model, slots: int) -> None:
        m.busy_slots -= slots
        m.leases -= 1
        if m.runner is not None and m.runner.lost:
            m.unload_requested = True  # its RPC worker died: free the slot in the budget now
        now = self.clock.monotonic()
        m.last_used = now
        if slots:
            m.completions.append(now)
        if self._idle_event is not None and not any(x.leases for x in self._models.values()):
            self._idle_event.set()
        self._schedule()

    async def load(self, model: str) -> None:
        """Make `model` resident (evicting idle models as needed), as a request would."""
        m, _ = await self.acquire(model, "__admin__", 0)
        self.release(m, 0)

    async def unload(self, model: str) -> None:
        """Unload `model` once its running requests finish (new ones wait meanwhile)."""
        m = self._resolve(model)
        if m.state == "unloaded":
            return
        m.unload_requested = True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        m.state_waiters.append(fut)
        self._schedule()
        await fut

    def _unload_at(self, m: _Model, now: float) -> float | None:
        if m.state != "loaded" or not m.idle or m.cfg.pinned or math.isinf(m.idle_limit):
            return None
        return time.time() - (now - (m.last_used or m.loaded_at)) + m.idle_limit

    def set_keep_alive(self, model: str, seconds: float) -> None:
        """A request's keep_alive (Ollama's): how long `model` stays loaded once idle, until
        it next unloads (then the catalog's applies again); math.inf: until evicted."""
        m = self._resolve(model)
        m.keep_alive = seconds
        self._schedule()

    def update_catalog(self, catalog: Catalog) -> None:
        """models.toml was re-read: new settings apply at each model's next load;
        removed models unload once idle (their waiters fail: the id no longer exists)."""
        self.catalog = catalog
        fresh: list[_Model] = []
        for mid, cfg in catalog.models.items():
            if mid in self._models:
                m = self._models[mid]
                if m.cfg != cfg:  # maybe another file: locate it (and its sha256) afresh
                    self._paths.pop(mid, None)
                    self._ready.discard(mid)
                    if m.state == "unloaded":
                        m.sha256 = None  # a resident model keeps its own until it unloads
                    fresh.append(m)
                m.cfg, m.removed = cfg, False
            else:
                self._models[mid] = _Model(mid, cfg)
                fresh.append(self._models[mid])
        for mid, m in list(self._models.items()):
            if mid not in catalog.models:
                m.removed = True
                if m.state == "unloaded":
                    for w in m.queue.take_all():
                        self._fail(w, ModelNotFound(f"model {mid!r} was removed from the catalog"))
                    del self._models[mid]
        self._prepare_all(fresh)
        self._schedule()

    def update_config(self, config: ApplianceConfig) -> None:
        self.config = config
        self._schedule()

    def snapshot(self) -> list[ModelStatus]:
        now = self.clock.monotonic()
        out = []
        for m in self._models.values():
            cfg = m.loaded_cfg or m.cfg
            est = m.estimate.total if m.estimate else self._peek_estimate(m)
            out.append(
                ModelStatus(
                    id=m.id,
                    state=m.public_state(),
                    memory_estimated=est,
                    memory_measured=m.measured,
                    device=m.placement.device if m.placement and m.state != "unloaded" else None,
                    gpu_layers=m.placement.n_gpu_layers if m.placement and m.state != "unloaded" else None,
                    slots_busy=m.busy_slots,
                    slots_total=cfg.parallel,
                    queue_depth=len(m.queue),
                    last_used=time.time() - (now - m.last_used) if m.last_used is not None else None,
                    idle_seconds=(now - m.last_used) if m.last_used is not None and m.leases == 0 else None,
                    sha256=m.sha256 or (cfg.sha256 if isinstance(cfg.sha256, str) else None),
                    source=cfg.source,
                    pinned=cfg.pinned,
                    unload_at=self._unload_at(m, now),
                    workers=self._workers_of(cfg),
                    charges={self._label(i): n for i, n in m.charges.items()},
                )
            )
        return out

    def status(self, model: str) -> ModelStatus:
        """One model's row (also a model removed from the catalog but still resident)."""
        mid = model if model in self._models else self._resolve(model).id
        return next(s for s in self.snapshot() if s.id == mid)

    # --- the one decision point ---------------------------------------------------------

    def _schedule(self) -> None:
        now = self.clock.monotonic()
        for m in list(self._models.values()):
            for w in m.queue.take_expired(now):
                self._fail(
                    w,
                    QueueTimeout(
                        f"request waited {self.config.queue.max_wait:g}s for model {m.id!r} (queue.max_wait)",
                        retry_after=self._retry_after(m),
                    ),
                )
            self._admit(m)
        self._plan_residency(now)
        self._arm_timer(now)

    def _admit(self, m: _Model) -> None:
        while m.admitting:
            w = m.queue.peek()
            if w is None or m.busy_slots + w.slots > m.parallel:
                return
            m.queue.pop()
            if w.future.done():  # cancelled in this same turn
                continue
            self._grant(m, w.slots)
            if w.slots:
                self._emit(lambda e: e.queue_waited(m.id, max(0.0, self.clock.monotonic() - w.enqueued)))
            w.future.set_result(m.runner)

    def _grant(self, m: _Model, slots: int) -> None:
        m.busy_slots += slots
        m.leases += 1
        m.last_used = self.clock.monotonic()

    def _plan_residency(self, now: float) -> None:
        """Decide (decide.py, pure) and apply the decision in this same synchronous step."""
        for m in self._models.values():  # headers are read off the loop before planning
            if m.state == "unloaded" and len(m.queue) and m.id not in self._ready and m.id not in self._preparing:
                self._start_prepare(m)
        d = decide(
            list(self._models.values()),
            now,
            swap_after=self.config.queue.swap_after,
            op_running=self._op is not None,
            stopping=self._stopping,
            ready=lambda m: m.id in self._ready,
            planner=lambda m, res: self._plan(m, res),
        )
        self._apply(d)
        self._check_budget()

    def _apply(self, d: Decision) -> None:
        for r in d.refusals:
            m = self._models[r.model]
            if isinstance(r.error, Impossible):
                imp = r.error
                err: Exception = InsufficientMemory(
                    f"model {m.id!r} needs {format_size(imp.need)} on {imp.device} but at most "
                    f"{format_size(imp.available)} can be made available (pinned models stay)"
                )
            else:
                e = r.error
                err = e if isinstance(e, ApplianceError) else EngineError(f"cannot plan model {m.id!r}: {e}")
                if not isinstance(e, WorkerUnreachable):
                    # The file may have been removed and another pulled: look again next time.
                    self._forget_paths(m)
            for w in m.queue.take_all():
                self._fail(w, err)
        if d.unloads:
            gone = [(self._models[mid], reason) for mid, reason in d.unloads]
            runners = [(m, m.begin_unload(), reason) for m, reason in gone]  # admit nothing from now on
            self._start_op(self._close_all(runners))
        elif d.load is not None:
            mid, p = d.load
            m = self._models[mid]
            m.begin_load(m.cfg, p.placement, p.estimate, p.charges)  # charged from this moment
            self._start_op(self._load(m, p))
        if d.drain is not None:
            for m in self._models.values():
                if m.id in d.drain and m.state == "loaded":
                    m.begin_drain()
                elif m.id not in d.drain and m.state == "draining":
                    m.cancel_drain()
                    self._admit(m)

    def _check_budget(self) -> None:
        """The invariant, after every decision: resident charges within every fixed budget."""
        try:
            charges = [m.charges for m in self._models.values() if m.resident] + list(self._stranded.values())
            check_budget(charges, self._fixed_budgets())
        except BudgetExceeded as e:
            log.error("%s: %s", e.message, [(m.id, m.state, m.charges) for m in self._models.values() if m.resident])
            if self._strict:
                raise

    def _fixed_budgets(self) -> list[int | None]:
        if self._n_devices is None:
            self._n_devices = len(self._hw.devices())
        b = self.config.memory.budget
        if b == "auto":
            return [None] * self._n_devices
        if isinstance(b, int):
            return [b] * self._n_devices
        return list(b)

    def _next_deadline(self, now: float) -> float | None:
        times: list[float] = []
        for m in self._models.values():
            times.extend(w.deadline for w in m.queue)
            if m.state == "loaded" and m.idle and not m.cfg.pinned and not math.isinf(m.idle_limit):
                times.append((m.last_used or m.loaded_at) + m.idle_limit)
            oldest = m.queue.oldest()
            if m.state == "unloaded" and oldest is not None:
                swap = self.config.queue.swap_after
                times.extend(
                    max(oldest, o.loaded_at) + swap
                    for o in self._models.values()
                    if o.state in ("loaded", "draining") and not o.idle and max(oldest, o.loaded_at) + swap > now
                )
        return min(times, default=None)

    def _arm_timer(self, now: float) -> None:
        at = None if self._stopping else self._next_deadline(now)
        if at == self._timer_at and self._timer is not None and not self._timer.done():
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = asyncio.get_running_loop().create_task(self._fire_at(at))

    async def _fire_at(self, at: float) -> None:
        await self.clock.sleep_until(at)
        self._timer = None
        self._timer_at = None
        self._schedule()

    # --- planning -------------------------------------------------------------------------

    def _budgets(self, devices: list[Device]) -> list[int | None]:
        return fixed_budgets(devices, self.config.memory, self._config_file)

    def _check_devices(self) -> None:
        """A budget list of the wrong length or a `gpu` index past the last GPU is a config
        error, found once at start rather than as a failure of every request that loads."""
        devices = self._hw.devices()
        self._budgets(devices)
        if not devices or devices[0].kind == "cpu":
            return  # RAM only: `gpu` is ignored
        for m in self._models.values():
            gpu = m.cfg.gpu
            if isinstance(gpu, int) and not isinstance(gpu, bool) and gpu >= len(devices):
                raise self._gpu_error(m)(gpu, len(devices))

    def _need_fn(self, m: _Model, paths: list[Path], layer_count: int) -> Callable[[DeviceKind, int], Estimate]:
        sha = self._sha256(m, paths)
        proj = self._store_mmproj(m.id, m.cfg) if self._store_mmproj and m.cfg.mmproj else None

        def need(kind: DeviceKind, k: int) -> Estimate:
            e = self._estimator.estimate(paths, m.cfg, gpu_layers=k, device=kind)
            if proj is not None and (kind == "cpu" or k > 0):  # encoded where the model runs
                e = e.plus(projector_need(proj))
            full = kind == "cpu" or k >= layer_count
            key = footprint_key(sha, m.cfg, device=kind, gpu_layers=layer_count if full else k, split=m.cfg.gpu == "split")
            measured = self._footprints.get(key)
            if measured is not None:
                return Estimate(measured, 0, 0, mapped=e.mapped)
            return e

        return need

    def _plan(self, m: _Model, residents: list[Resident]) -> Plan | Wait | Impossible:
        residents = residents + self._stranded_residents()
        devices = self._hw.devices()
        mem = Memory.read(devices, self._budgets(devices), self.config.memory.reserve, residents)
        return self._place(m, mem, residents)

    def _place(self, m: _Model, mem: Memory, residents: list[Resident]) -> Plan | Wait | Impossible:
        """Plan `m` against `mem`. With RPC workers their devices join the accounting, from
        readings taken off the loop (workermem.py): Wait while a reading is being taken;
        WorkerUnreachable (the model's waiters get 503) when a worker did not answer."""
        paths = self._paths.get(m.id) or self._locate(m)
        layers = self._estimator.layer_count(paths)
        need = self._need_fn(m, paths, layers)
        self._labels.update((d.index, d.label) for d in mem.devices)
        endpoints = self._workers_of(m.cfg)
        if not endpoints:
            return plan(m.cfg, layers, need, mem, residents, self._gpu_error(m))
        workers = self._workers.reading(endpoints, self._ours)
        if workers is None:
            return Wait()
        for w in workers:
            mem.add_worker(w.index, w.free, w.ours, self.config.memory.reserve, residents)
        return plan_with_workers(m.cfg, layers, need, mem, residents, workers)

    def _ours(self, key: int) -> int:
        """Bytes our resident models are charged on one device (a worker's, by charge key)."""
        return sum(m.charges.get(key, 0) for m in self._models.values() if m.resident)

    def _workers_of(self, cfg: ModelConfig) -> list[str]:
        return list(self.config.cluster.rpc if cfg.rpc is None else cfg.rpc)

    def _label(self, key: int) -> str:
        """A charge key's device label: "cpu", "cuda:0", "rpc:host:port#0"."""
        return self._labels.get(key) or self._workers.label(key) or str(key)

    def _gpu_error(self, m: _Model) -> Callable[[int, int], Exception]:
        def err(index: int, count: int) -> Exception:
            return ConfigError(str(self.catalog.path), f"{m.id}.gpu", f"GPU {index} does not exist (this machine has {count})")

        return err

    def _check_pinned_fit(self, pinned: list[_Model]) -> None:
        """Place the pinned models one after another on empty devices; all must fit."""
        devices = self._hw.devices()
        placed: list[Resident] = []
        for m in pinned:
            mem = Memory.read(devices, self._budgets(devices), self.config.memory.reserve, [])
            for r in placed:  # virtual: not in the free-memory reading, so charge them here
                for i, n in r.charges.items():
                    if i < WORKER_INDEX_BASE:  # a worker's use comes from `placed` (add_worker)
                        mem.used[i] += n
            p = self._place(m, mem, placed)
            if not isinstance(p, Plan):
                need = p.need if isinstance(p, Impossible) else 0
                avail = p.available if isinstance(p, Impossible) else 0
                others = ", ".join(r.id for r in placed) or "nothing else"
                raise ConfigError(
                    str(self.catalog.path),
                    f"{m.id}.pinned",
                    f"pinned models do not fit together: {m.id!r} needs {format_size(need)}, "
                    f"{format_size(avail)} left beside {others}",
                )
            placed.append(Resident(m.id, p.charges, {}, "never", 0.0))

    def _locate(self, m: _Model) -> list[Path]:
        paths = self._store_paths(m.id, m.cfg)
        if not paths:
            raise ModelNotFound(f"model {m.id!r} is not in the store; run `appliance pull {m.id}`")
        self._paths[m.id] = list(paths)
        m.sha256 = None  # derived from the paths, which may name another file now
        return self._paths[m.id]

    def _sha256(self, m: _Model, paths: list[Path]) -> str:
        if m.sha256:
            return m.sha256
        found = _SHA_IN_NAME.search(paths[0].name) if paths else None
        pinned = m.cfg.pinned_sha256[0] if m.cfg.pinned_sha256 else None
        m.sha256 = found.group(1) if found else pinned or str(paths[0] if paths else m.id)
        return m.sha256

    def _peek_estimate(self, m: _Model) -> int | None:
        """An estimate for an unloaded model in /admin/models, if its header was read
        (never read here: this runs on the loop, for every /metrics scrape too)."""
        if m.id not in self._ready:
            return None
        try:
            paths = self._paths.get(m.id) or self._store_paths(m.id, m.cfg)
            if not paths:
                return None
            devices = self._hw.devices()
            kind = devices[0].kind if devices else "cpu"
            layers = self._estimator.layer_count(paths)
            return self._need_fn(m, list(paths), layers)(kind, layers).total
        except Exception:  # an unreadable file is reported by ls/verify, not here
            return None

    # --- residency operations (run one at a time, in `_op`) -----------------------------

    def _start_op(self, coro: Any) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:  # already reported to the waiters concerned
                log.exception("residency operation failed")
            finally:
                self._op = None
                self._schedule()

        self._op = asyncio.get_running_loop().create_task(run())

    async def _close_all(self, gone: Sequence[tuple[_Model, RunnerLike | None, UnloadReason]]) -> None:
        """Finish unloads already begun (the models left service when this was decided)."""
        for m, runner, reason in gone:
            await self._close(m, runner, reason)

    async def _load(self, m: _Model, p: Plan) -> None:
        """Run a load begun by `_apply` (charged, state "loading") to "loaded" or back."""
        cfg, paths = m.cfg, list(self._paths[m.id])
        started = self.clock.monotonic()
        log.info("loading %s on %s (%d layers, estimated %s)", m.id, p.placement.device, p.placement.n_gpu_layers, format_size(p.estimate.total))
        runner: RunnerLike | None = None
        remote = {i: n for i, n in p.charges.items() if i >= WORKER_INDEX_BASE}
        workers = self._workers_of(cfg) if remote else []
        self._workers.begin(workers)  # their memory is in motion: no reading holds meanwhile
        try:  # whatever fails from here on, the model must not stay "loading" or leak a runner
            before = self._hw.devices()
            rss_before = self._rss()
            runner = await self._run_blocking(self._loader, m.id, cfg, paths, p.placement)
            await self._run_blocking(runner.warmup)
            measured = self._measure(p.placement, before, self._hw.devices(), rss_before, runner)
            if remote and measured:  # the head measures its own devices; workers keep their estimate
                measured = {**remote, **measured}
        except Exception as e:
            await self._load_failed(m, runner, started, e)
            raise
        finally:
            self._workers.end(workers)
        m.finish_load(runner, measured, self.clock.monotonic())
        if measured and not remote:  # footprints are keyed without workers: only whole-head loads
            try:
                self._remember_footprint(m, cfg, paths, p, before)
            except Exception:  # the model is loaded fine; it is only measured again next time
                log.exception("could not record the measured footprint of %s", m.id)
        self._emit(lambda e: e.model_loaded(m.id, m.loaded_at - started, True))
        # An unload asked for during the load (unload_requested) is still owed to its
        # waiter, and happens as soon as the model is idle.

    async def _load_failed(self, m: _Model, runner: RunnerLike | None, started: float, e: Exception) -> None:
        """Undo a load that failed anywhere after it started: free what llama.cpp holds
        (model, context, VRAM, threads), mark the model unloaded, tell everyone waiting."""
        if runner is not None:
            try:
                await self._run_blocking(runner.close)
            except Exception:
                log.exception("closing the runner of failed load %s", m.id)
        self._emit(lambda e: e.model_loaded(m.id, self.clock.monotonic() - started, False))
        m.fail_load()
        err = e if isinstance(e, ApplianceError) else EngineError(f"loading model {m.id!r} failed: {e}")
        for w in m.queue.take_all():
            self._fail(w, err)
        self._forget_paths(m)

    def _remember_footprint(self, m: _Model, cfg: ModelConfig, paths: list[Path], p: Plan, before: list[Device]) -> None:
        if not (p.placement.device == "cpu" or p.placement.all_layers):
            return
        assert m.measured is not None
        key = footprint_key(
            self._sha256(m, paths), cfg, device=before[0].kind if before else "cpu",
            gpu_layers=p.placement.n_gpu_layers if not p.placement.all_layers else self._estimator.layer_count(paths),
            split=p.placement.split_mode == "layer",
        )
        self._footprints.put(key, m.measured)

    def _measure(
        self, pl: Placement, before: list[Device], after: list[Device], rss_before: int, runner: RunnerLike
    ) -> dict[int, int]:
        """Bytes the load took per device, after the warm-up decode at full batch.

        GPU: the device's free-memory delta (CUDA's pool has grown by then). RAM: the buffer
        sizes llama.cpp logged for this load when the runner reports them (exact, and not
        disturbed by other runners allocating meanwhile), counting the file's weights once
        (a repacked copy replaces the mapped pages in use); else the process's RSS delta.
        """
        if pl.device == "cpu":
            logged = _logged_bytes(runner)
            if logged:
                return {pl.devices[0]: logged}
            delta = self._rss() - rss_before
            return {pl.devices[0]: delta} if delta > 0 else {}
        b = {d.index: d.free for d in before}
        a = {d.index: d.free for d in after}
        out = {i: b[i] - a[i] for i in pl.devices if i in a and i in b and b[i] - a[i] > 0}
        return out if len(out) == len(pl.devices) else {}

    async def _unload(self, m: _Model, reason: UnloadReason) -> None:
        await self._close(m, m.begin_unload(), reason)

    async def _close(self, m: _Model, runner: RunnerLike | None, reason: UnloadReason) -> None:
        """Free an unloading model's runner (off the loop), then mark it unloaded."""
        log.info("unloading %s (%s)", m.id, reason)
        if reason == "evict":
            self._emit(lambda e: e.model_evicted(m.id))
        workers = self._workers.endpoints_of(m.charges)
        self._workers.begin(workers)
        try:
            if runner is not None:
                await self._run_blocking(runner.close)
        finally:
            self._workers.end(workers)
            if runner is not None and runner.lost:
                self._strand(m)
            m.finish_unload()
            log.info("unloaded %s", m.id)
            if m.id not in self._paths:  # its settings changed while resident
                m.sha256 = None
            if m.removed and m.idle and self._models.get(m.id) is m:
                del self._models[m.id]

    def _strand(self, m: _Model) -> None:
        """A runner abandoned after its worker died keeps its head-side memory until the
        daemon restarts (hardware/rpc.py): keep charging it (its workers' share died with
        them), as a resident nothing can evict, so no load is planned into that memory."""
        head = {i: n for i, n in m.charges.items() if i < WORKER_INDEX_BASE and n > 0}
        if not head:
            return
        key = f"{m.id} (worker lost, held until restart #{len(self._stranded) + 1})"
        self._stranded[key] = head
        log.error("model %s: %s of head memory stays held by its abandoned runner until the daemon restarts",
                  m.id, format_size(sum(head.values())))

    def _stranded_residents(self) -> list[Resident]:
        return [Resident(k, dict(c), {}, "never", 0.0) for k, c in self._stranded.items()]

    # --- headers, read off the event loop -------------------------------------------------

    def _start_prepare(self, m: _Model) -> None:
        """Read the model's GGUF header in a thread (a 262k-token vocabulary takes seconds
        with a full parse), so that planning on the loop finds it cached."""
        self._preparing.add(m.id)

        async def run() -> None:
            try:
                paths = self._paths.get(m.id) or self._locate(m)
                await self._run_blocking(functools.partial(self._estimator.layer_count, paths))
                if self._models.get(m.id) is m and self._paths.get(m.id) == paths:
                    self._ready.add(m.id)
            except Exception as e:
                err = e if isinstance(e, ApplianceError) else EngineError(f"cannot read model {m.id!r}: {e}")
                for w in m.queue.take_all():
                    self._fail(w, err)
                self._forget_paths(m)
            finally:
                self._preparing.discard(m.id)
                self._tasks.discard(task)
                self._schedule()

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)

    def _prepare_all(self, models: Sequence[_Model]) -> None:
        """Read the headers of models whose file is here, in the background (for
        /admin/models' estimates, and so a first request does not wait for it)."""
        for m in models:
            if m.id not in self._ready and m.id not in self._preparing and self._present(m):
                self._start_prepare(m)

    def _present(self, m: _Model) -> bool:
        try:
            return bool(self._paths.get(m.id) or self._locate(m))
        except Exception:
            return False

    async def _prepare_now(self, m: _Model) -> None:
        """Start's version: read the header off the loop and wait for it."""
        paths = self._paths.get(m.id) or self._locate(m)
        await self._run_blocking(functools.partial(self._estimator.layer_count, paths))
        self._ready.add(m.id)

    def _forget_paths(self, m: _Model) -> None:
        """Locate the model's file (and read its header) afresh next time."""
        self._paths.pop(m.id, None)
        self._ready.discard(m.id)
        m.sha256 = None

    # --- helpers --------------------------------------------------------------------------

    def _resolve(self, name: str) -> _Model:
        found = self.catalog.resolve(name)
        if found is None or found[0] not in self._models:
            raise ModelNotFound(f"model {name!r} does not exist")
        return self._models[found[0]]

    def _emit(self, report: Callable[[SchedulerEvents], None]) -> None:
        """Report to the events sink (`lambda e: e.model_loaded(...)`); a failing sink must
        never break scheduling."""
        try:
            report(self.events)
        except Exception:
            log.exception("scheduler events sink failed")

    def _fail(self, w: Waiter, err: Exception) -> None:
        if not w.future.done():
            w.future.set_exception(err)

    def _retry_after(self, m: _Model) -> float:
        """Seconds until the queue ahead is likely served, from recent completions per second."""
        now = self.clock.monotonic()
        while m.completions and m.completions[0] < now - THROUGHPUT_WINDOW:
            m.completions.popleft()
        if not m.completions or m.state != "loaded":
            return DEFAULT_RETRY_AFTER
        span = max(1.0, min(THROUGHPUT_WINDOW, now - m.loaded_at))
        rate = len(m.completions) / span
        ahead = len(m.queue) + 1
        return float(min(max(1, math.ceil(ahead / rate)), max(1.0, self.config.queue.max_wait)))


def _logged_bytes(runner: RunnerLike) -> int | None:
    """RAM a CPU runner holds per llama.cpp's own buffer log (engine's `Runner.buffers`)."""
    buffers = runner.buffers
    by_kind = buffers.by_kind if buffers is not None else None
    if not by_kind:
        return None
    # Buffers on RPC workers' devices ("RPC0[host:port]") live on other machines.
    local = {kind: {dev: n for dev, n in devs.items() if not dev.startswith("RPC")} for kind, devs in by_kind.items()}
    model = local.get("model", {})
    mapped = sum(v for k, v in model.items() if k.endswith("_Mapped"))
    copies = sum(v for k, v in model.items() if not k.endswith("_Mapped"))
    rest = sum(sum(d.values()) for k, d in local.items() if k != "model")
    return max(mapped, copies) + rest or None
