"""GGUF headers with Gemma 3's 262k-token vocabulary (issue 14): read without the token
arrays, and never on the event loop, while three such models are added and loaded.

Timing-free: every header parse records whether its thread was running an event loop, and a
heartbeat task counts loop turns while the headers are read and the models load.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import gguf
import pytest

from appliance.clock import SystemClock
from appliance.config import ApplianceConfig, Catalog, ModelConfig
from appliance.hardware import RamHardware
from appliance.scheduler import Footprints, Scheduler
from appliance.scheduler.loader import engine_loader
from appliance.store import ggufinfo
from appliance.store.ggufinfo import read_gguf_info
from appliance.errors import NotGGUF
from appliance.store.ggufmeta import ArrayLen, read_meta
from ggufmaker import VOCAB, make_big_vocab_gguf


@pytest.fixture(scope="session")
def big_vocab_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bigvocab")
    return {f"g{i}": make_big_vocab_gguf(d / f"g{i}.gguf", seed=i) for i in range(3)}


def test_reader_agrees_with_gguf_package_and_skips_token_arrays(tmp_path: Path) -> None:
    meta = read_meta(VOCAB)
    ref = gguf.GGUFReader(VOCAB)
    for key, f in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        got = meta.get(key)
        want = f.contents()
        if isinstance(got, ArrayLen):  # long arrays: their length only
            assert got.length == len(want), key
        elif isinstance(want, list):
            assert list(got) == pytest.approx(want) if want and isinstance(want[0], float) else list(got) == want, key
        else:
            assert got == pytest.approx(want) if isinstance(want, float) else got == want, key
    assert meta.array_len("tokenizer.ggml.tokens") == 32000


def test_big_vocabulary_header_facts(big_vocab_models: dict[str, Path]) -> None:
    info = read_gguf_info(big_vocab_models["g0"])
    assert (info.vocab_size, info.layers, info.embedding, info.output_tied) == (262144, 1, 16, True)
    assert info.token_embd_bytes == 262144 * 16 * 4


@pytest.mark.parametrize("content", [b"", b"GGML" + b"\0" * 64, b"GGUF\x03\0\0\0" + b"\xff" * 7, b"not a model at all"])
def test_non_gguf_files_are_refused_clearly(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "x.gguf"
    p.write_bytes(content)
    with pytest.raises(NotGGUF) as e:
        read_gguf_info(p)
    assert "not a GGUF file" in e.value.message or "unsupported GGUF version" in e.value.message


async def test_three_big_vocab_models_added_and_loaded_without_blocking_the_loop(
    big_vocab_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_loop: list[bool] = []
    real = ggufinfo.read_meta

    def spy(path):  # type: ignore[no-untyped-def]
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(path)

    monkeypatch.setattr(ggufinfo, "read_meta", spy)
    config = ApplianceConfig.model_validate({"store": {"path": str(tmp_path / "store")}})
    sched = Scheduler(
        config, Catalog({}, tmp_path / "models.toml"),
        store_paths=lambda mid, cfg: [Path(cfg.source.removeprefix("file://"))],
        loader=engine_loader, hardware=RamHardware(), clock=SystemClock(),
        footprints=Footprints(tmp_path / "store" / "footprints.json"), strict=True,
    )
    await sched.start()
    beats = 0
    stop = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal beats
        while not stop.is_set():
            beats += 1
            await asyncio.sleep(0)

    hb = asyncio.create_task(heartbeat())
    cfgs = {mid: ModelConfig(source=f"file://{p}", context=256, parallel=1) for mid, p in big_vocab_models.items()}
    sched.update_catalog(Catalog(cfgs, tmp_path / "models.toml"))  # as a SIGHUP would
    sched.snapshot()  # /metrics and /admin/models read this on the loop meanwhile
    for mid in cfgs:
        await sched.load(mid)
        assert sched.status(mid).state == "loaded"
        sched.snapshot()
    stop.set()
    await hb
    await sched.stop()
    assert on_loop and not any(on_loop), on_loop  # every header parse ran in a thread
    assert beats > len(cfgs)  # the loop kept turning meanwhile
    assert all(s.memory_estimated for s in sched.snapshot())
