"""Real llama.cpp: three tiny models under a RAM budget that holds two.

Concurrent requests to all three complete with the output each model gives alone, and no
runner is closed while it has a request in flight (swapping never interrupts one).
Prompts share no prefix (distinct first token, no BOS) so a slot's prompt cache never
changes the batch shape: greedy output alone and under the scheduler must be identical.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from appliance.clock import SystemClock
from appliance.config import ApplianceConfig, Catalog, ModelConfig
from appliance.engine.types import GenerationRequest, SamplingParams
from appliance.hardware import RamHardware
from appliance.scheduler import Footprints, GGUFEstimator, Placement, Scheduler
from appliance.scheduler.loader import engine_loader

PARAMS = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
CPU = Placement("cpu", (0,), 0, "none", 0, True)


def prompt(i: int) -> GenerationRequest:
    return GenerationRequest([1000 + 37 * i, 500, 600, 700 + i], PARAMS, add_special=False)


async def solo_outputs(mid: str, cfg: ModelConfig, path: Path, n: int) -> list[str]:
    runner = await asyncio.to_thread(engine_loader, mid, cfg, [path], CPU)
    try:
        return [(await runner.generate(prompt(i)).collect())[0] for i in range(n)]
    finally:
        await asyncio.to_thread(runner.close)


async def test_three_models_two_fit_all_requests_complete_uninterrupted(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    cfgs = {m: ModelConfig(source=f"file://{p}", context=256, parallel=1, keep_alive="forever")
            for m, p in tiny_models.items()}
    per_model = 3
    expected = {m: await solo_outputs(m, cfgs[m], tiny_models[m], per_model) for m in cfgs}
    # the models disagree on every prompt, so an output equal to its model's solo output
    # shows the request ran on that model (and not merely that some model answered)
    for i in range(per_model):
        solo = [expected[m][i] for m in cfgs]
        assert all(solo) and len(set(solo)) == len(solo), (i, solo)

    need = max(GGUFEstimator().estimate([p], cfgs[m], gpu_layers=0, device="cpu").total for m, p in tiny_models.items())
    config = ApplianceConfig.model_validate({
        "store": {"path": str(tmp_path / "store")},
        "memory": {"budget": int(need * 2.5)},  # two fit, three do not
        "queue": {"swap_after": "100ms", "max_wait": "120s"},
    })
    resident: set[str] = set()
    most_resident = 0
    closed_busy: list[str] = []
    loads: list[str] = []

    def loader(mid: str, cfg: ModelConfig, paths: list[Path], pl: Placement):  # type: ignore[no-untyped-def]
        nonlocal most_resident
        r = engine_loader(mid, cfg, paths, pl)
        loads.append(mid)
        resident.add(mid)
        most_resident = max(most_resident, len(resident))
        close = r.close

        def checked_close() -> None:
            if r.busy_slots or r.queued:
                closed_busy.append(mid)
            resident.discard(mid)
            close()

        r.close = checked_close  # type: ignore[method-assign]
        return r

    sched = Scheduler(
        config,
        Catalog(cfgs, tmp_path / "models.toml"),
        store_paths=lambda mid, cfg: [tiny_models[mid]],
        loader=loader,
        hardware=RamHardware(),
        clock=SystemClock(),
        footprints=Footprints(tmp_path / "store" / "footprints.json"),
    )

    async def request(mid: str, i: int) -> tuple[str, int, str, str | None]:
        async with sched.lease(mid, key=f"user-{i}") as runner:
            assert runner.model_id == mid
            deltas = [d async for d in runner.generate(prompt(i))]
        return mid, i, "".join(d.text for d in deltas), deltas[-1].finish_reason

    jobs = [request(m, i) for i in range(per_model) for m in cfgs]
    results = await asyncio.gather(*jobs)
    await sched.stop()

    for mid, i, text, finish in results:
        assert finish == "length", (mid, i, finish)
        assert text == expected[mid][i], (mid, i)
    assert closed_busy == []
    assert most_resident <= 2 and set(loads) == set(cfgs) and len(loads) >= 3
    assert sched.snapshot() and all(s.state == "unloaded" for s in sched.snapshot())
    assert (tmp_path / "store" / "footprints.json").is_file()
