"""models.toml has one read-modify-write path (store.catalog_edit.edit_catalog): concurrent
`appliance import` and `bundle import` runs lose no entry; rewrites keep the file's mode and
group; a failed edit or a no-op writes nothing."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import tomllib

from appliance.bundle.catalog_merge import merge_catalog
from appliance.config import Catalog, ModelConfig, load_catalog
from appliance.errors import BundleError, UsageError
from appliance.store.catalog_edit import add_model_entry, edit_catalog, make_table

ROUNDS = 60


def _entry(mid: str) -> dict[str, Any]:
    return {"source": f"file:///models/{mid}.gguf", "context": 512}


def _add_via_import(path: str, start: Any) -> None:
    """What `appliance import` does, ROUNDS times, with a catalog read before the race."""
    stale = Catalog({}, Path(path))
    start.wait()
    for i in range(ROUNDS):
        add_model_entry(stale, f"imp-{i}", _entry(f"imp-{i}"))


def _add_via_bundle(path: str, start: Any) -> None:
    """What `bundle import` does, ROUNDS times."""
    start.wait()
    for i in range(ROUNDS):
        mid = f"bun-{i}"
        merge_catalog(Path(path), [(mid, _entry(mid), ModelConfig.model_validate(_entry(mid)))],
                      replace=False, note="from a bundle")


def test_concurrent_imports_lose_no_entry(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text("# the admin's note\n")
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=f, args=(str(path), start)) for f in (_add_via_import, _add_via_bundle)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    ids = set(load_catalog(path).models)
    want = {f"imp-{i}" for i in range(ROUNDS)} | {f"bun-{i}" for i in range(ROUNDS)}
    assert ids == want, f"lost: {sorted(want - ids)}"
    assert path.read_text().startswith("# the admin's note\n")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".models.toml.")], "temp files left"


def test_id_added_by_another_import_is_refused_not_duplicated(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    stale = Catalog({}, path)  # read before the other import wrote "m"
    add_model_entry(Catalog({}, path), "m", _entry("m"))
    before = path.read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        add_model_entry(stale, "m", _entry("m2"))
    assert path.read_bytes() == before


def test_rewrite_keeps_mode_and_group(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    add_model_entry(Catalog({}, path), "a", _entry("a"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # a new catalog is not secret
    gid = 4242 if os.geteuid() == 0 else os.getgid()
    os.chown(path, -1, gid)
    os.chmod(path, 0o640)  # what install.sh makes of /etc/appliance/models.toml
    add_model_entry(Catalog({}, path), "b", _entry("b"))
    merge_catalog(path, [("c", _entry("c"), ModelConfig.model_validate(_entry("c")))], replace=False, note="n")
    st = path.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, gid)
    assert set(tomllib.loads(path.read_text())) == {"a", "b", "c"}


def test_failed_or_empty_edits_write_nothing(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text('["a"]\nsource = "file:///m/a.gguf"\n')
    ino = path.stat().st_ino
    with edit_catalog(path):
        pass  # unchanged: not rewritten
    assert path.stat().st_ino == ino
    with pytest.raises(RuntimeError):
        with edit_catalog(path) as edit:
            edit.doc.add("b", make_table(_entry("b")))
            raise RuntimeError("the caller failed half-way")
    with pytest.raises(BundleError, match="invalid"):  # an alias that shadows an id
        merge_catalog(path, [("c", {"source": "file:///m/c.gguf", "aliases": ["a"]},
                              ModelConfig.model_validate({"source": "file:///m/c.gguf", "aliases": ["a"]}))],
                      replace=False, note="n")
    assert path.stat().st_ino == ino and "b" not in path.read_text()
