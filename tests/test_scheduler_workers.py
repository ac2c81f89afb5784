"""The planner with RPC workers: their devices are charged their share of the model, in the
proportion the loader splits layers, and a worker without room means Wait or Impossible."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Sequence

import pytest
from schedharness import GB as HGB
from schedharness import Harness, Holder, make, settle, use

from appliance.config import ConfigError, ModelConfig
from appliance.errors import InsufficientMemory, WorkerUnreachable
from appliance.hardware.devices import Device, DeviceKind
from appliance.scheduler.estimate import Estimate
from appliance.scheduler.memory import Memory, Resident, check_budget
from appliance.scheduler.placement import Impossible, Plan, Wait
from appliance.scheduler.workermem import WORKER_INDEX_BASE, WorkerDevice
from appliance.scheduler.workers import plan_with_workers, shares

GB = 1 << 30
W0, W1 = WORKER_INDEX_BASE, WORKER_INDEX_BASE + 1
RAM = [Device(0, "cpu", "RAM", 64 * GB, 64 * GB)]


def need_10gb(kind: DeviceKind, layers: int) -> Estimate:
    return Estimate(10 * GB, 0, 0)


def _plan(cfg: ModelConfig, budget: int, workers: list[WorkerDevice], residents: Sequence[Resident] = (),
          devices: Sequence[Device] = RAM) -> tuple[Plan | Wait | Impossible, Memory]:
    mem = Memory.read(devices, [budget] * len(devices), 0, residents)
    for w in workers:
        mem.add_worker(w.index, w.free, w.ours, 0, residents)
    return plan_with_workers(cfg, 10, need_10gb, mem, residents, workers), mem


def test_a_model_too_big_for_the_head_alone_fits_with_a_worker() -> None:
    """A 10 GB model, 6 GB budget on the head: half its layers on a worker with room."""
    cfg = ModelConfig(source="file:///m.gguf", gpu_layers=5)
    p, _ = _plan(cfg, 6 * GB, [WorkerDevice(W0, "rpc:w:1#0", 8 * GB, 0)])
    assert isinstance(p, Plan)
    assert p.charges == {0: 5 * GB, W0: 5 * GB}
    assert p.placement.device == "cpu" and p.evict == ()
    check_budget([p.charges], [6 * GB])  # the head's fixed budget holds; workers have none


def test_offloaded_layers_are_shared_by_the_workers_free_memory() -> None:
    """gpu_layers "all" on a RAM head: every layer on the workers, 3:1 as their free memory."""
    workers = [WorkerDevice(W0, "rpc:a:1#0", 30 * GB, 0), WorkerDevice(W1, "rpc:b:1#0", 10 * GB, 0)]
    p, _ = _plan(ModelConfig(source="file:///m.gguf", gpu_layers="all"), 1 * GB, workers)
    assert isinstance(p, Plan) and p.charges == {0: 0, W0: 15 * GB // 2, W1: 5 * GB // 2}


def test_a_gpu_head_splits_the_offloaded_estimate_over_workers_and_its_gpus() -> None:
    gpus = [Device(0, "cuda", "GPU", 24 * GB, 12 * GB)]
    assert shares(10 * GB, 10, 10, [(0, 12 * GB)], [WorkerDevice(W0, "rpc:w:1#0", 12 * GB, 0)], ram_head=False) \
        == {0: 5 * GB, W0: 5 * GB}
    p, _ = _plan(ModelConfig(source="file:///m.gguf"), 6 * GB, [WorkerDevice(W0, "rpc:w:1#0", 12 * GB, 0)], devices=gpus)
    assert isinstance(p, Plan) and p.placement.split_mode == "layer" and p.charges == {0: 5 * GB, W0: 5 * GB}


def test_a_worker_without_room_is_impossible_and_named() -> None:
    cfg = ModelConfig(source="file:///m.gguf", gpu_layers=5)
    p, _ = _plan(cfg, 64 * GB, [WorkerDevice(W0, "rpc:w:1#0", 4 * GB, 0)])
    assert isinstance(p, Impossible)
    assert p.device == "rpc:w:1#0" and p.need == 5 * GB and p.available == 4 * GB


def test_a_worker_held_by_an_idle_model_evicts_it_and_by_a_busy_one_waits() -> None:
    """Another model's charge on the worker counts: evicted when idle, waited for when busy."""
    cfg = ModelConfig(source="file:///m.gguf", gpu_layers=5)
    for evictable, expect in (("idle", Plan), ("busy_wait", Wait)):
        other = Resident("other", {W0: 4 * GB}, {}, evictable, 1.0)  # type: ignore[arg-type]
        # The worker reads 2 GB free beside `other`'s 4 GB: 6 GB once it is gone.
        p, _ = _plan(cfg, 64 * GB, [WorkerDevice(W0, "rpc:w:1#0", 2 * GB, 4 * GB)], [other])
        assert isinstance(p, expect), (evictable, p)
        if isinstance(p, Plan):
            assert p.evict == ("other",)


async def test_pinned_models_with_a_worker_must_fit_on_it_together(tmp_path: Path) -> None:
    """Pinned models are placed one after another before any loads: the worker's free memory
    (read through the injected reader) holds the first two models' shares, not a third's."""
    h = make(tmp_path, {"a": 15 * GB, "b": 15 * GB, "c": 15 * GB}, memory={"budget": "100GB"},
             models={m: {"pinned": True, "rpc": ["w:1"]} for m in "abc"},
             workers=lambda ep: [(f"rpc:{ep}#0", 12 * GB, 12 * GB)])
    with pytest.raises(ConfigError) as e:
        await h.sched.start()
    assert "c.pinned" in e.value.message and "'a', 'b'" not in e.value.message and "a, b" in e.value.message


class FakeWorkers:
    """Workers whose free memory is their total less what the scheduler charged there (what a
    real worker would report); `down` ones refuse, and every read is recorded."""

    def __init__(self, total: int) -> None:
        self.total, self.down, self.reads = total, set[str](), list[str]()
        self.h: Harness | None = None

    def __call__(self, ep: str) -> list[tuple[str, int, int]]:
        self.reads.append(ep)
        if ep in self.down:
            raise WorkerUnreachable(ep, "Connection refused")
        label = f"rpc:{ep}#0"
        assert self.h is not None
        held = sum(r.charges.get(label, 0) for r in self.h.sched.snapshot() if r.state != "unloaded")
        return [(label, self.total - held, self.total)]


def _with_workers(tmp_path: Path, sizes: dict[str, int], rpc: dict[str, list[str]], total: int = 10 * HGB,
                  **kw: object) -> tuple[Harness, FakeWorkers]:
    w = FakeWorkers(total)
    h = make(tmp_path, sizes, models={m: {"rpc": eps, **kw.pop("extra", {}).get(m, {})}  # type: ignore[union-attr]
                                      for m, eps in rpc.items()}, workers=w, **kw)  # type: ignore[arg-type]
    w.h = h
    return h, w


async def test_a_model_too_big_for_the_head_budget_is_charged_on_the_head_and_the_worker(tmp_path: Path) -> None:
    """memory.budget one byte under the model: refused alone, loaded with a worker, charged
    on each device in /admin/models' `charges`, and the head's budget holds (strict harness)."""
    h, _ = _with_workers(tmp_path, {"alone": 8 * HGB, "split": 8 * HGB}, {"split": ["w:1"]},
                         memory={"budget": 8 * HGB - 1})
    with pytest.raises(InsufficientMemory):
        await use(h, "alone")
    await use(h, "split")
    row = h.sched.status("split")
    assert row.state == "loaded" and set(row.charges) == {"cuda:0", "rpc:w:1#0"}
    assert all(n > 0 for n in row.charges.values()) and sum(row.charges.values()) == 8 * HGB
    assert row.charges["cuda:0"] <= 8 * HGB - 1


async def test_a_dead_worker_fails_the_request_at_once_and_is_asked_again_next_time(tmp_path: Path) -> None:
    """No hang: the read answers WorkerUnreachable (503 worker_unreachable) to the waiters;
    nothing is charged; the next request reads again and loads once the worker is back."""
    h, w = _with_workers(tmp_path, {"split": 8 * HGB, "local": 4 * HGB}, {"split": ["w:1"]})
    w.down.add("w:1")
    with pytest.raises(WorkerUnreachable) as e:
        await use(h, "split")
    assert "w:1" in e.value.message and e.value.status == 503
    assert h.state("split") == "unloaded" and h.sched.status("split").charges == {}
    await use(h, "local")  # other models unaffected
    w.down.clear()
    await use(h, "split")
    assert h.state("split") == "loaded" and w.reads == ["w:1", "w:1"]


async def test_a_worker_slow_to_answer_stalls_only_its_model(tmp_path: Path) -> None:
    """The read runs off the loop: while it hangs, another model loads and serves."""
    h, w = _with_workers(tmp_path, {"split": 8 * HGB, "local": 4 * HGB}, {"split": ["w:1"]})
    h.gates["w:1"] = asyncio.Event()  # the harness holds the read of w:1 until set
    waiting = asyncio.create_task(use(h, "split"))
    await settle()
    assert not waiting.done() and h.state("split") == "unloaded"
    await use(h, "local")
    h.gates["w:1"].set()
    await waiting
    assert h.loaded() == {"split", "local"}


async def test_a_worker_whose_read_never_returns_fails_the_next_requests_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read past READ_TIMEOUT_S is a worker that does not answer: its thread may never
    return, and no second read starts meanwhile, so every request until it returns gets
    that 503 at once (not a wait until the queue's timeout); once it returns, it is read again."""
    from appliance.scheduler import workermem

    monkeypatch.setattr(workermem, "READ_TIMEOUT_S", 0.01)  # the first request's wait, not asserted on
    h, w = _with_workers(tmp_path, {"split": 8 * HGB}, {"split": ["w:1"]})
    h.gates["w:1"] = asyncio.Event()  # the read hangs until set
    with pytest.raises(WorkerUnreachable):
        await use(h, "split")
    again = asyncio.create_task(use(h, "split"))
    await settle()
    assert again.done() and isinstance(again.exception(), WorkerUnreachable)
    h.gates["w:1"].set()  # the stuck read returns at last
    await settle()
    await use(h, "split")
    assert h.state("split") == "loaded" and w.reads == ["w:1", "w:1"]


async def test_each_load_attempt_reads_the_workers_again(tmp_path: Path) -> None:
    """A load or unload on a worker makes its reading stale: the next plan reads afresh, and
    sees what the appliance's own models hold there (two models that fit together)."""
    h, w = _with_workers(tmp_path, {"a": 8 * HGB, "b": 8 * HGB}, {"a": ["w:1"], "b": ["w:1"]})
    await use(h, "a")
    await use(h, "b")
    assert w.reads == ["w:1", "w:1"] and h.loaded() == {"a", "b"}
    on_worker = sum(h.sched.status(m).charges["rpc:w:1#0"] for m in "ab")
    assert on_worker <= 10 * HGB - 1 * HGB  # the worker's total less memory.reserve


async def test_a_model_whose_worker_died_keeps_charging_the_head_until_restart(tmp_path: Path) -> None:
    """The abandoned runner's head-side memory is never freed: it stays charged (so a model
    that needs it is refused), while the worker's share is gone with the worker."""
    h, w = _with_workers(tmp_path, {"split": 8 * HGB, "other": 6 * HGB}, {"split": ["w:1"]},
                         memory={"budget": 8 * HGB})
    holder = Holder(h, "split")
    await holder.admitted.wait()
    head = h.sched.status("split").charges["cuda:0"]
    holder.runner.lost = True  # what the engine's runner reports once its worker died mid-call
    await holder.done()
    await settle()
    assert h.state("split") == "unloaded"
    assert head > 8 * HGB - 6 * HGB  # so "other" no longer fits beside what is held
    with pytest.raises(InsufficientMemory):
        await use(h, "other")


@pytest.mark.parametrize("seed", range(6))
async def test_randomized_walk_keeps_every_device_within_its_memory(tmp_path: Path, seed: int) -> None:
    """Arrivals, completions, time and workers going down and up, over three models sharing a
    worker and one local: after every step the head's fixed budget holds (the strict harness
    raises) and so does each worker's memory (its total less memory.reserve)."""
    import random

    from appliance.errors import ApplianceError

    rng = random.Random(seed)
    sizes = {"a": 8 * HGB, "b": 6 * HGB, "c": 9 * HGB, "d": 5 * HGB}
    h, w = _with_workers(tmp_path, sizes, {"a": ["w:1"], "b": ["w:1", "w:2"], "c": ["w:2"]}, total=6 * HGB,
                         gpus=(6 * HGB,), memory={"budget": 5 * HGB},
                         queue={"max_wait": "30s", "swap_after": "2s", "max_waiting": 64})
    for mid in sizes:
        h.delays[mid] = rng.choice([0.0, 0.5, 3.0])
    holders: list[Holder] = []

    def check() -> None:
        rows = [r for r in h.sched.snapshot() if r.state != "unloaded"]
        for label in ("rpc:w:1#0", "rpc:w:2#0"):
            assert sum(r.charges.get(label, 0) for r in rows) <= w.total - 1 * HGB, (label, rows)
        for x in holders:
            if x.task.done() and x.task.exception() is not None:
                assert isinstance(x.task.exception(), ApplianceError), repr(x.task.exception())

    for _ in range(250):
        r = rng.random()
        if r < 0.35:
            holders.append(Holder(h, rng.choice(list(sizes)), key=rng.choice("xy")))
        elif r < 0.65:
            live = [x for x in holders if x.admitted.is_set() and not x.release.is_set()]
            if live:
                rng.choice(live).release.set()
        elif r < 0.9:
            h.clock.advance(rng.choice([0.01, 0.5, 2.5, 6, 40]))
        else:
            ep = rng.choice(["w:1", "w:2"])
            w.down.symmetric_difference_update({ep})
        await settle(20)
        check()
    w.down.clear()
    for _ in range(200):
        for x in holders:
            x.release.set()
        h.clock.advance(1)
        await settle(20)
        check()
        if all(x.task.done() for x in holders):
            break
    assert all(x.task.done() for x in holders)
    assert any(x.task.exception() is None for x in holders)
