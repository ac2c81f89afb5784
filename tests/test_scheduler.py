"""Scheduler logic on an injected 24 GB card: residency, eviction, queues, fairness, time."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from appliance.config import Catalog, ModelConfig
from appliance.errors import (
    ConfigError,
    Draining,
    InsufficientMemory,
    InvalidRequest,
    ModelNotFound,
    QueueFull,
    QueueTimeout,
)
from appliance.scheduler import Footprints
from schedharness import GB, Holder, make, settle, use


# --- residency -------------------------------------------------------------------------


async def test_loads_on_demand_and_reports_state(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 8 * GB})
    assert h.state("a") == "unloaded"
    await use(h, "a")
    s = h.sched.status("a")
    assert (s.state, s.device, s.memory_estimated, s.slots_busy, s.queue_depth) == ("loaded", "cuda:0", 8 * GB, 0, 0)
    assert s.memory_measured == 8 * GB  # the fake card's free memory fell by that much
    assert h.events == ["load a"]


async def test_evicts_least_recently_used_first(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 10 * GB, "b": 10 * GB, "c": 10 * GB})
    await use(h, "a")
    await use(h, "b")
    h.clock.advance(1)
    await use(h, "a")  # a is now more recent than b
    await use(h, "c")
    assert h.loaded() == {"a", "c"}
    assert h.events == ["load a", "load b", "unload b", "load c"]


async def test_pinned_never_evicted(tmp_path: Path) -> None:
    h = make(tmp_path, {"p": 10 * GB, "a": 10 * GB, "b": 10 * GB}, models={"p": {"pinned": True}})
    await h.sched.start()
    assert h.loaded() == {"p"}
    h.clock.advance(1)
    await use(h, "a")
    await use(h, "b")  # p is least recently used, but pinned: a goes
    assert h.loaded() == {"p", "b"}
    assert "unload p" not in h.events


async def test_in_flight_model_never_evicted_and_swap_waits_for_it(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 15 * GB, "b": 15 * GB})
    hold = Holder(h, "a")
    await hold.admitted.wait()
    b = asyncio.create_task(use(h, "b"))
    await settle()
    assert h.state("a") == "loaded" and h.state("b") == "unloaded"
    assert h.sched.status("b").queue_depth == 1
    assert not hold.runner.closed
    await hold.done()  # a goes idle: now it may be evicted
    await b
    assert h.events == ["load a", "unload a", "load b"]
    assert hold.runner.closed


async def test_insufficient_memory_names_need_and_available(tmp_path: Path) -> None:
    h = make(tmp_path, {"p": 10 * GB, "big": 20 * GB}, models={"p": {"pinned": True}})
    await h.sched.start()
    with pytest.raises(InsufficientMemory) as e:
        await use(h, "big")
    assert "20.0 GB" not in e.value.message  # sizes are binary units
    assert "18.6 GiB" in e.value.message and "12.1 GiB" in e.value.message  # need, 24-1-10 GB left
    assert e.value.status == 503 and h.sched.status("big").queue_depth == 0


async def test_model_larger_than_card_fails_at_once_even_while_busy(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 10 * GB, "huge": 30 * GB})
    hold = Holder(h, "a")
    await hold.admitted.wait()
    with pytest.raises(InsufficientMemory):
        await use(h, "huge")  # no waiting for swap_after: nothing could make room
    await hold.done()


async def test_pinned_models_that_do_not_fit_together_are_a_config_error(tmp_path: Path) -> None:
    h = make(tmp_path, {"p": 15 * GB, "q": 15 * GB}, models={"p": {"pinned": True}, "q": {"pinned": True}})
    with pytest.raises(ConfigError) as e:
        await h.sched.start()
    assert e.value.exit_code == 2 and "q.pinned" in e.value.message
    assert h.events == []  # checked before loading anything


async def test_fixed_budget_and_budget_list(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 10 * GB, "b": 10 * GB}, memory={"budget": "12GB"})
    await use(h, "a")
    await use(h, "b")
    assert h.loaded() == {"b"}  # 12 GB budget holds one, though the card has 24
    bad = make(tmp_path, {"a": 1 * GB}, gpus=(24 * GB, 24 * GB), memory={"budget": ["10GB"]})
    with pytest.raises(ConfigError) as e:
        await use(bad, "a")
    assert "memory.budget" in e.value.message and "2 GPU" in e.value.message


async def test_auto_budget_reads_free_memory_before_each_load(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 10 * GB, "b": 10 * GB})
    await use(h, "a")
    h.hw.allocate(0, 8 * GB)  # another process takes 8 GB of the card
    await use(h, "b")  # 24 - 1 - 8 leaves room for one of them
    assert h.loaded() == {"b"}


# --- keep_alive ---------------------------------------------------------------------------


async def test_keep_alive_unloads_after_idle_time(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB}, models={"a": {"keep_alive": "5m"}})
    await use(h, "a")
    h.clock.advance(299)
    await settle()
    assert h.state("a") == "loaded"
    h.clock.advance(1)
    await settle()
    assert h.state("a") == "unloaded"


async def test_keep_alive_restarts_with_each_use(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB}, models={"a": {"keep_alive": "60s"}})
    await use(h, "a")
    h.clock.advance(50)
    await use(h, "a")
    h.clock.advance(50)
    await settle()
    assert h.state("a") == "loaded"
    h.clock.advance(10)
    await settle()
    assert h.state("a") == "unloaded"


async def test_keep_alive_zero_and_forever(tmp_path: Path) -> None:
    h = make(tmp_path, {"z": 5 * GB, "f": 5 * GB}, models={"z": {"keep_alive": "0"}, "f": {"keep_alive": "forever"}})
    hold = Holder(h, "z")
    await hold.admitted.wait()
    assert h.state("z") == "loaded"
    await hold.done()
    await settle()
    assert h.state("z") == "unloaded"
    await use(h, "f")
    h.clock.advance(10**9)
    await settle()
    assert h.state("f") == "loaded"


# --- admission ----------------------------------------------------------------------------


async def test_queue_full_is_429_with_retry_after_from_throughput(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB}, models={"a": {"parallel": 1}}, queue={"max_waiting": 2})
    await use(h, "a")
    for _ in range(30):  # 30 requests over 60 s: 0.5 per second
        h.clock.advance(2)
        await use(h, "a")
    hold = Holder(h, "a")
    await hold.admitted.wait()
    waiting = [asyncio.create_task(use(h, "a")) for _ in range(2)]
    await settle()
    with pytest.raises(QueueFull) as e:
        await use(h, "a")
    assert e.value.status == 429
    assert e.value.retry_after == 6  # 3 requests ahead at 0.5/s
    await hold.done()
    await asyncio.gather(*waiting)


async def test_queue_full_without_history_uses_a_default_retry_after(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB}, models={"a": {"parallel": 1}}, queue={"max_waiting": 1})
    hold = Holder(h, "a")
    await hold.admitted.wait()
    waiting = asyncio.create_task(use(h, "a"))
    await settle()
    with pytest.raises(QueueFull) as e:
        await use(h, "a")
    assert e.value.retry_after == 5.0
    await hold.done()
    await waiting


async def test_a_flooding_key_cannot_lock_others_out_of_the_queue(tmp_path: Path) -> None:
    """Issue 13, finding 4: key A fills max_waiting; key B still gets in (A's newest waiter
    makes room and gets 429), and A, once at its share, is refused while B is not."""
    h = make(tmp_path, {"a": 5 * GB}, models={"a": {"parallel": 1}}, queue={"max_waiting": 4})
    hold = Holder(h, "a", key="A")
    await hold.admitted.wait()
    flood = [asyncio.create_task(use(h, "a", key="A")) for _ in range(4)]
    await settle()
    with pytest.raises(QueueFull):
        await use(h, "a", key="A")  # full, and A holds it all
    b1 = asyncio.create_task(use(h, "a", key="B"))
    await settle()
    assert isinstance(flood[-1].exception(), QueueFull)  # A's newest made room
    b2 = asyncio.create_task(use(h, "a", key="B"))
    await settle()
    assert isinstance(flood[-2].exception(), QueueFull)  # A down to its share (2 of 4)
    with pytest.raises(QueueFull):
        await use(h, "a", key="B")  # B at its share too: now B is the one refused
    with pytest.raises(QueueFull):
        await use(h, "a", key="A")
    await hold.done()
    await asyncio.gather(b1, b2, *flood[:2])


async def test_waiting_past_max_wait_is_503_queue_timeout(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB}, models={"a": {"parallel": 1}}, queue={"max_wait": "30s", "swap_after": "1s"})
    hold = Holder(h, "a")
    await hold.admitted.wait()
    w = asyncio.create_task(use(h, "a"))
    await settle()
    h.clock.advance(29)
    await settle()
    assert not w.done()
    h.clock.advance(1)
    with pytest.raises(QueueTimeout) as e:
        await w
    assert e.value.status == 503 and e.value.retry_after is not None
    assert h.sched.status("a").queue_depth == 0
    await hold.done()


async def test_in_flight_limited_to_parallel_slots_and_n_takes_n(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB}, models={"a": {"parallel": 4}})
    three = Holder(h, "a", slots=3)
    await three.admitted.wait()
    two = Holder(h, "a", slots=2)
    await settle()
    one = Holder(h, "a", slots=1)
    await settle()
    # one would fit beside the 3, but FIFO within a key: the 2-slot request is first in line
    assert not two.admitted.is_set() and not one.admitted.is_set()
    assert h.sched.status("a").slots_busy == 3 and h.sched.status("a").queue_depth == 2
    await three.done()
    await two.admitted.wait()
    await one.admitted.wait()
    assert h.sched.status("a").slots_busy == 3
    with pytest.raises(InvalidRequest):
        await use(h, "a", slots=5)
    await two.done()
    await one.done()


async def test_fair_between_keys(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB}, models={"a": {"parallel": 1}})
    order: list[str] = []

    async def req(key: str, tag: str) -> None:
        async with h.sched.lease("a", key):
            order.append(tag)

    first = Holder(h, "a", key="A")
    await first.admitted.wait()
    flood = [asyncio.create_task(req("A", f"A{i}")) for i in range(1, 5)]
    await settle()
    b = asyncio.create_task(req("B", "B1"))
    await settle()
    assert h.sched.status("a").queue_depth == 5
    await first.done()
    await asyncio.gather(*flood, b)
    assert order[0] == "B1"  # B waited after A's flood, yet is served before A's next
    assert order[1:] == ["A1", "A2", "A3", "A4"]


async def test_round_robin_between_two_flooding_keys(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB}, models={"a": {"parallel": 1}})
    order: list[str] = []

    async def req(key: str, tag: str) -> None:
        async with h.sched.lease("a", key):
            order.append(tag)

    first = Holder(h, "a", key="X")
    await first.admitted.wait()
    tasks = [asyncio.create_task(req("A", f"A{i}")) for i in range(3)]
    await settle()
    tasks += [asyncio.create_task(req("B", f"B{i}")) for i in range(3)]
    await settle()
    await first.done()
    await asyncio.gather(*tasks)
    assert order == ["A0", "B0", "A1", "B1", "A2", "B2"]


async def test_disconnected_waiter_leaves_the_queue(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB}, models={"a": {"parallel": 1}})
    hold = Holder(h, "a")
    await hold.admitted.wait()
    gone = asyncio.create_task(use(h, "a", key="gone"))
    stays = Holder(h, "a", key="stays")
    await settle()
    assert h.sched.status("a").queue_depth == 2
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert h.sched.status("a").queue_depth == 1
    await hold.done()
    await stays.admitted.wait()  # the slot went to the next waiter, not to the ghost
    assert h.sched.status("a").slots_busy == 1
    await stays.done()


async def test_unknown_model_and_missing_file(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB})
    with pytest.raises(ModelNotFound):
        await use(h, "nope")
    h.sched._store_paths = lambda mid, cfg: None
    with pytest.raises(ModelNotFound) as e:
        await use(h, "a")
    assert "appliance pull a" in e.value.message


async def test_aliases_resolve(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB}, models={"a": {"aliases": ["default"]}})
    await use(h, "default")
    assert h.state("a") == "loaded"


# --- no thrash: swap_after ----------------------------------------------------------------


async def test_busy_model_evicted_only_after_swap_after_and_drains_first(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 15 * GB, "b": 15 * GB}, models={"a": {"parallel": 2}})
    hold = Holder(h, "a")
    await hold.admitted.wait()
    b = asyncio.create_task(use(h, "b"))
    await settle()
    h.clock.advance(1.9)
    await settle()
    # before swap_after: a keeps serving its own new requests
    also_a = Holder(h, "a")
    await also_a.admitted.wait()
    h.clock.advance(0.1)
    await settle()
    # swap pending: a admits nothing new, but nothing running is interrupted
    late_a = asyncio.create_task(use(h, "a"))
    await settle()
    assert h.sched.status("a").queue_depth == 1 and h.state("a") == "loaded"
    assert not hold.runner.closed
    await hold.done()
    await settle()
    assert h.state("a") == "loaded" and not b.done()
    await also_a.done()  # the last request on a finishes: now the swap happens
    await b
    assert h.events[:3] == ["load a", "unload a", "load b"]
    await late_a  # a's waiter kept its place; b went idle, so a comes back for it
    assert h.events == ["load a", "unload a", "load b", "unload b", "load a"]


async def test_freshly_loaded_model_serves_swap_after_before_being_swapped_back(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 15 * GB, "b": 15 * GB}, models={"a": {"parallel": 1}, "b": {"parallel": 1}})
    hold_a = Holder(h, "a")
    await hold_a.admitted.wait()
    hold_b = Holder(h, "b")
    await settle()
    h.clock.advance(2)
    await settle()
    wait_a = Holder(h, "a")  # a's next request queues while a drains
    await hold_a.done()
    await hold_b.admitted.wait()
    assert h.state("b") == "loaded"
    await settle()
    # a's request has waited since before b loaded, but b gets swap_after of service first
    assert h.state("b") == "loaded" and not wait_a.admitted.is_set()
    h.clock.advance(2)
    await settle()
    await hold_b.done()
    await wait_a.admitted.wait()
    await wait_a.done()
    assert h.events == ["load a", "unload a", "load b", "unload b", "load a"]


# --- placement across GPUs and partial offload -----------------------------------------------


async def test_gpu_auto_places_on_a_card_with_room(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 15 * GB, "b": 15 * GB, "c": 15 * GB}, gpus=(24 * GB, 24 * GB))
    await use(h, "a")
    await use(h, "b")
    assert h.sched.status("a").device == "cuda:0" and h.sched.status("b").device == "cuda:1"
    assert h.events == ["load a", "load b"]  # no eviction: the second card had room
    h.clock.advance(1)
    await use(h, "b")
    await use(h, "c")  # both full: a is least recently used, its card is reused
    assert h.sched.status("c").device == "cuda:0" and h.loaded() == {"b", "c"}


async def test_gpu_index_pins_and_split_spreads(tmp_path: Path) -> None:
    h = make(
        tmp_path,
        {"one": 5 * GB, "big": 42 * GB, "bad": 1 * GB},
        gpus=(24 * GB, 24 * GB),
        models={"one": {"gpu": 1}, "big": {"gpu": "split"}, "bad": {"gpu": 7}},
    )
    await use(h, "one")
    assert h.sched.status("one").device == "cuda:1"
    await use(h, "big")  # 42 GB fits only across both cards (one is evicted first)
    s = h.sched.status("big")
    assert s.device == "split" and h.loaded() == {"big"}
    r = h.runners[-1]
    assert r.placement.split_mode == "layer" and r.placement.devices == (0, 1)
    with pytest.raises(ConfigError) as e:
        await use(h, "bad")
    assert "bad.gpu" in e.value.message


async def test_gpu_layers_auto_evicts_first_then_offloads_what_fits(tmp_path: Path) -> None:
    h = make(
        tmp_path,
        {"p": 13 * GB, "idle": 5 * GB, "x": 20 * GB},
        models={"p": {"pinned": True}, "x": {"gpu_layers": "auto"}},
        layers=10,
    )
    await h.sched.start()
    await use(h, "idle")
    await use(h, "x")
    # idle model evicted first; then 24 - 1 - 13 = 10 GB hold 5 of x's 10 layers (2 GB each)
    assert h.loaded() == {"p", "x"}
    assert h.sched.status("x").gpu_layers == 5
    assert h.runners[-1].placement.n_gpu_layers == 5 and not h.runners[-1].placement.all_layers


async def test_gpu_layers_auto_full_offload_when_it_fits(tmp_path: Path) -> None:
    h = make(tmp_path, {"x": 20 * GB}, models={"x": {"gpu_layers": "auto"}})
    await use(h, "x")
    assert h.runners[-1].placement.all_layers


async def test_fixed_gpu_layers_need_only_those_layers(tmp_path: Path) -> None:
    h = make(tmp_path, {"x": 40 * GB}, models={"x": {"gpu_layers": 5}}, layers=10)
    await use(h, "x")  # 5 of 10 layers: 20 GB fits the 24 GB card
    assert h.runners[-1].placement.n_gpu_layers == 5


# --- measurement ------------------------------------------------------------------------------


async def test_measured_footprint_is_recorded_and_used_next_time(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 10 * GB, "b": 10 * GB}, real_sizes={"a": 14 * GB})
    await use(h, "a")
    s = h.sched.status("a")
    assert s.memory_estimated == 10 * GB and s.memory_measured == 14 * GB
    saved = json.loads((tmp_path / "store" / "footprints.json").read_text())
    assert list(saved.values()) == [14 * GB]
    assert any("|ctx=4096|par=2|kv=f16|" in k for k in saved)
    # a fresh scheduler (a restart) plans with the measurement: a (14) + b (10) > 23
    h2 = make(tmp_path, {"a": 10 * GB, "b": 10 * GB}, real_sizes={"a": 14 * GB},
              footprints=Footprints(tmp_path / "store" / "footprints.json"))
    await h2.sched.start()  # reads the headers in the background (estimates need them)
    await settle()
    assert h2.sched.status("a").memory_estimated == 14 * GB
    await use(h2, "b")
    await use(h2, "a")
    assert h2.loaded() == {"a"} and "unload b" in h2.events


def test_footprints_survive_a_damaged_file(tmp_path: Path) -> None:
    p = tmp_path / "footprints.json"
    p.write_text("{not json")
    f = Footprints(p)
    assert f.get("x") is None
    f.put("x", 5)
    assert Footprints(p).get("x") == 5


# --- admin operations, catalog changes, shutdown ---------------------------------------------


async def test_admin_load_and_unload(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB})
    await h.sched.load("a")
    assert h.state("a") == "loaded"
    hold = Holder(h, "a")
    await hold.admitted.wait()
    unloading = asyncio.create_task(h.sched.unload("a"))
    await settle()
    assert h.state("a") == "loaded" and not unloading.done()  # waits for the request
    await hold.done()
    await unloading
    assert h.state("a") == "unloaded" and hold.runner.closed


async def test_catalog_update_applies_at_next_load_and_removed_models_unload(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB, "b": 5 * GB})
    await use(h, "a")
    hold = Holder(h, "b")
    await hold.admitted.wait()
    new = {
        "a": ModelConfig(source="file:///models/a.gguf", parallel=3),
    }
    h.sched.update_catalog(Catalog(new, tmp_path / "models.toml"))
    await settle()
    assert h.sched.status("a").slots_total == 2  # still the loaded settings
    assert h.state("b") == "loaded"  # removed, but busy: serves its request first
    await hold.done()
    await settle()
    assert [s.id for s in h.sched.snapshot()] == ["a"]
    await h.sched.unload("a")
    await use(h, "a")
    assert h.sched.status("a").slots_total == 3


async def test_stop_drains_and_unloads(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB}, models={"a": {"parallel": 1}})
    hold = Holder(h, "a")
    await hold.admitted.wait()
    waiting = asyncio.create_task(use(h, "a"))
    await settle()
    stopping = asyncio.create_task(h.sched.stop())
    with pytest.raises(Draining):
        await waiting
    with pytest.raises(Draining):
        await use(h, "a")
    await settle()
    assert not stopping.done() and not hold.runner.closed
    await hold.done()
    await stopping
    assert hold.runner.closed and h.state("a") == "unloaded"


async def test_load_failure_reaches_the_waiters_and_a_later_request_retries(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB})
    real_loader = h.sched._loader
    calls = []

    def failing(*args):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("llama.cpp could not load")
        return real_loader(*args)

    h.sched._loader = failing
    with pytest.raises(Exception) as e:
        await use(h, "a")
    assert "could not load" in str(e.value)
    assert h.state("a") == "unloaded"
    await use(h, "a")
    assert h.state("a") == "loaded"


async def test_unload_requested_during_loading_unloads_once_loaded(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB})
    h.gates["a"] = asyncio.Event()
    loading = asyncio.create_task(h.sched.load("a"))
    await settle()
    assert h.state("a") == "loading"
    unloading = asyncio.create_task(h.sched.unload("a"))
    await settle()
    assert not unloading.done()
    h.gates["a"].set()
    await settle()
    assert unloading.done()  # the request survived the load's end; no keep_alive needed
    await unloading
    await loading  # its waiter keeps its place and brings the model back
    assert h.events[:2] == ["load a", "unload a"] and h.runners[0].closed


async def test_failed_warmup_closes_the_runner_and_frees_its_memory(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB})
    real_loader = h.sched._loader

    def warmup_fails(*args):  # type: ignore[no-untyped-def]
        r = real_loader(*args)

        def boom() -> None:
            raise RuntimeError("warm-up decode failed")

        r.warmup = boom
        return r

    h.sched._loader = warmup_fails
    with pytest.raises(Exception) as e:
        await use(h, "a")
    assert "warm-up decode failed" in str(e.value)
    assert h.state("a") == "unloaded" and h.runners[0].closed
    assert h.hw.devices()[0].free == 24 * GB  # llama.cpp's memory is given back
    h.sched._loader = real_loader
    await use(h, "a")
    assert h.state("a") == "loaded"


async def test_failed_measurement_closes_the_runner_and_fails_the_waiters(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 5 * GB})

    def broken(*args):  # type: ignore[no-untyped-def]
        raise RuntimeError("device probe failed")

    h.sched._measure = broken  # type: ignore[method-assign]
    h.gates["a"] = asyncio.Event()
    req = asyncio.create_task(use(h, "a"))
    await settle()
    unloading = asyncio.create_task(h.sched.unload("a"))  # asked for while loading
    await settle()
    h.gates["a"].set()
    await settle()
    assert req.done() and unloading.done()  # not left "loading" forever
    await unloading
    with pytest.raises(Exception) as e:
        await req
    assert "device probe failed" in str(e.value)
    assert h.state("a") == "unloaded" and h.runners[0].closed


async def test_failed_footprint_write_is_logged_and_the_model_serves(tmp_path: Path) -> None:
    class Unwritable(Footprints):
        def put(self, key: str, nbytes: int) -> None:
            raise OSError("read-only store")

    h = make(tmp_path, {"a": 5 * GB}, footprints=Unwritable(None))
    req = asyncio.create_task(use(h, "a"))
    await settle()
    assert req.done()
    await req
    s = h.sched.status("a")
    assert s.state == "loaded" and s.memory_measured == 5 * GB and not h.runners[0].closed


async def _blob_store(h, files: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """Serve model `a` from a content-addressed blob named by `files["a"]` (a sha256)."""
    h.sched._store_paths = lambda mid, cfg: [Path(f"/store/blobs/sha256-{files[mid]}")] if files.get(mid) else None


async def test_a_changed_model_file_gets_its_own_sha256_and_footprint(tmp_path: Path) -> None:
    old, new = "1" * 64, "2" * 64
    h = make(tmp_path, {"a": 5 * GB})
    files = {"a": old}
    await _blob_store(h, files)
    h.est.sizes.update({f"sha256-{old}": 5 * GB, f"sha256-{new}": 8 * GB})
    await use(h, "a")
    assert h.sched.status("a").sha256 == old and h.sched.status("a").memory_measured == 5 * GB
    await h.sched.unload("a")
    files["a"] = new  # models.toml now names another file
    h.sched.update_catalog(Catalog({"a": ModelConfig(source="file:///models/other.gguf", parallel=2)}, tmp_path / "models.toml"))
    s = h.sched.status("a")
    assert s.sha256 != old  # the old file is no longer what this model loads
    h.real_sizes["a"] = 8 * GB
    await use(h, "a")
    s = h.sched.status("a")
    assert (s.sha256, s.memory_estimated) == (new, 8 * GB)  # not the old file's measured 5 GB


async def test_a_removed_and_re_pulled_file_is_found_without_a_restart(tmp_path: Path) -> None:
    old, new = "1" * 64, "2" * 64
    h = make(tmp_path, {"a": 5 * GB})
    files = {"a": old}
    await _blob_store(h, files)
    h.est.sizes[f"sha256-{old}"] = 5 * GB
    await use(h, "a")
    await h.sched.unload("a")
    del h.est.sizes[f"sha256-{old}"]  # `appliance rm a`: its header can no longer be read
    with pytest.raises(Exception):
        await use(h, "a")
    files["a"] = new  # `appliance pull a` brought another blob
    h.est.sizes[f"sha256-{new}"] = 5 * GB
    await use(h, "a")
    assert h.state("a") == "loaded" and h.sched.status("a").sha256 == new


async def test_budget_list_of_the_wrong_length_is_a_config_error_at_start(tmp_path: Path) -> None:
    conf = str(tmp_path / "etc" / "appliance.toml")
    h = make(tmp_path, {"a": 1 * GB}, gpus=(24 * GB, 24 * GB), memory={"budget": ["10GB"]}, config_path=conf)
    with pytest.raises(ConfigError) as e:
        await h.sched.start()  # no pinned model: nothing would be planned before a request
    assert e.value.exit_code == 2 and e.value.file == conf and e.value.key == "memory.budget"
    assert "2 GPU" in e.value.message and h.events == []


async def test_gpu_index_past_the_last_gpu_is_a_config_error_at_start(tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 1 * GB, "b": 1 * GB}, gpus=(24 * GB,), models={"b": {"gpu": 1}})
    with pytest.raises(ConfigError) as e:
        await h.sched.start()
    assert e.value.exit_code == 2 and e.value.key == "b.gpu" and e.value.file == str(tmp_path / "models.toml")
    assert "GPU 1 does not exist" in e.value.message and h.events == []
    ok = make(tmp_path, {"a": 1 * GB}, gpus=(24 * GB, 24 * GB), models={"a": {"gpu": 1}}, memory={"budget": ["10GB", "10GB"]})
    await ok.sched.start()  # a valid index and a list of the right length pass
