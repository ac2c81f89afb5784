"""llama.cpp's log once a model is loaded: its per-step lines stay in C (llamalog.quiet), a
load still captures its buffer sizes, and an idle runner's lines still reach `logging`."""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import llama_cpp
import pytest

from appliance.config import ModelConfig
from appliance.engine import llamalog
from appliance.engine.runner import Runner
from appliance.engine.types import GenerationRequest, SamplingParams


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def llama_records() -> Iterator[_Records]:
    """Every line llama.cpp hands to Python, at any level (the callback drops what no
    handler wants, so the logger must want DEBUG)."""
    logger = logging.getLogger("appliance.llama")
    h = _Records()
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(h)
    yield h
    logger.removeHandler(h)
    logger.setLevel(old)


def _load(path: Path) -> bool:
    """A real model load (a missing file: llama.cpp logs errors and returns NULL)."""
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
    if model:
        llama_cpp.llama_model_free(model)
    return bool(model)


async def test_generating_sends_no_line_into_python(tiny_gguf: Path, llama_records: _Records) -> None:
    # backend sampling on: llama_sampler_sample logs a debug line per token, set_sampler and
    # the graph's re-plan a few more per request
    cfg = ModelConfig(source=f"file://{tiny_gguf}", context=128, parallel=2, backend_sampling=True)
    r = Runner([tiny_gguf], cfg, model_id="tiny", n_threads=1)
    try:
        assert r.buffers.total("model") > 0 and r.buffers.total("compute") > 0  # the load still captures
        llama_records.records.clear()
        params = SamplingParams(max_tokens=24, temperature=0.8, ignore_eos=True)
        n = 0
        for g in r.generate_batch([GenerationRequest([1, 50, 60, 70], params)] * 2):
            async for d in g:
                n += len(d.token_ids)
        assert n == 48
        assert [rec.getMessage() for rec in llama_records.records] == []
    finally:
        r.close()


def test_quiet_drops_lines_a_load_still_captures_and_idle_logs(
        tiny_gguf: Path, tmp_path: Path, llama_records: _Records) -> None:
    llamalog.install()
    missing = tmp_path / "missing.gguf"

    def errors() -> int:
        n = sum(rec.levelno >= logging.ERROR for rec in llama_records.records)
        llama_records.records.clear()
        return n

    assert not _load(missing) and errors() > 0  # an idle process: errors reach logging
    with _thread_inside_quiet():
        assert not _load(missing) and errors() == 0  # while a step runs: dropped in C
        with llamalog.capture() as lines:  # a load meanwhile still sees its lines
            assert _load(tiny_gguf)
        assert llamalog.parse_buffer_sizes(llamalog.join_lines(lines)).total("model") > 0
        assert not _load(missing) and errors() == 0  # the load's end restored quiet
    assert not _load(missing) and errors() > 0


def test_a_thread_released_from_quiet_no_longer_silences_the_process() -> None:
    """An abandoned decode thread (a lost RPC worker) never leaves quiet(): releasing it by
    ident must give llama.cpp's lines back to Python, and its late exit must not matter."""
    llamalog.install()
    with _thread_inside_quiet() as t:
        assert llamalog._active is llamalog._NOOP
        assert t.ident is not None
        llamalog.release(t.ident)
        assert llamalog._active is llamalog._callback
    assert llamalog._active is llamalog._callback


@contextmanager
def _thread_inside_quiet() -> Iterator[threading.Thread]:
    """A thread sitting inside llamalog.quiet() until the block ends (a decode thread mid-step)."""
    inside, leave = threading.Event(), threading.Event()

    def step() -> None:
        with llamalog.quiet():
            inside.set()
            leave.wait()

    t = threading.Thread(target=step)
    t.start()
    try:
        inside.wait()
        yield t
    finally:
        leave.set()
        t.join()
