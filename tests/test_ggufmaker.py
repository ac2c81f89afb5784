"""The tiny-GGUF cache: built once per content hash, handed out as copies. (The build itself
is stubbed here to count calls; every other test uses real builds.)"""

from __future__ import annotations

from pathlib import Path

import pytest

import ggufmaker
from ggufmaker import Shape, cache_key, make_gguf


def test_built_once_then_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[int] = []

    def write(path: Path, shape: Shape, seed: int) -> None:
        builds.append(seed)
        path.write_bytes(f"{shape.name}/{seed}".encode())

    monkeypatch.setattr(ggufmaker, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(ggufmaker, "_write_gguf", write)
    shape = Shape(name="cachetest")
    first = make_gguf(tmp_path / "one" / "m.gguf", shape, seed=3)
    second = make_gguf(tmp_path / "two" / "m.gguf", shape, seed=3)
    assert builds == [3] and first.read_bytes() == second.read_bytes() == b"cachetest/3"
    first.write_bytes(b"changed by a test")  # a copy: the cache and other copies keep theirs
    assert make_gguf(tmp_path / "three.gguf", shape, seed=3).read_bytes() == b"cachetest/3"
    make_gguf(tmp_path / "four.gguf", shape, seed=4)
    assert builds == [3, 4]
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())  # no temp files left behind
    assert names == sorted(f"cachetest-{cache_key(shape, s)[:24]}.gguf" for s in (3, 4))


def test_key_changes_with_every_input() -> None:
    base = cache_key(Shape(), 0)
    assert len({base, cache_key(Shape(), 1), cache_key(Shape(n_layer=3), 0), cache_key(Shape(name="x"), 0)}) == 4
