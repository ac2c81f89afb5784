"""A model's multimodal projector travels with it: pulled beside it, bundled with it,
imported with it (and its record says so), removed with it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from appliance.bundle import export_to_file, import_bundle, plan_export
from appliance.config import load_catalog
from appliance.errors import BundleError
from appliance.store import Store, pull_model
from tests.mmprojmaker import make_mmproj


def _catalog(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def test_the_projector_is_bundled_imported_and_removed_with_its_model(tmp_path: Path, tiny_gguf: Path) -> None:
    proj = make_mmproj(tmp_path / "mmproj-tiny.gguf")
    proj_sha = hashlib.sha256(proj.read_bytes()).hexdigest()
    cat = load_catalog(_catalog(tmp_path / "models.toml",
                                f'["vl"]\nsource = "file://{tiny_gguf}"\nmmproj = "file://{proj}"\n'))
    src = Store.open(tmp_path / "src")
    pull_model(src, "vl", cat.models["vl"], progress=False)
    assert src.mmproj_path("vl", cat.models["vl"]) == src.blob_path(proj_sha)

    plan = plan_export(src, cat, ["vl"])
    [model] = plan.manifest.models
    assert model.mmproj is not None and model.mmproj.sha256 == proj_sha and len(model.shards) == 1
    bundle = tmp_path / "vl.bundle"
    export_to_file(plan, bundle)

    dest = Store.open(tmp_path / "dest")
    dest_cat = tmp_path / "dest-models.toml"
    with bundle.open("rb") as f:
        import_bundle(f, dest, dest_cat)
    imported = load_catalog(dest_cat)
    rec = dest.record("vl")
    assert rec is not None and rec.mmproj is not None and rec.mmproj.sha256 == proj_sha
    path = dest.mmproj_path("vl", imported.models["vl"])
    assert path is not None and path.read_bytes() == proj.read_bytes()

    dest.remove("vl", imported)
    assert not dest.has_blob(proj_sha)


def test_a_bundled_projector_must_match_the_entrys_pinned_sha256(tmp_path: Path, tiny_gguf: Path) -> None:
    from appliance.bundle.manifest import build_manifest

    proj = make_mmproj(tmp_path / "mmproj-tiny.gguf")
    model_sha = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    table = {"source": f"file://{tiny_gguf}", "mmproj": f"file://{proj}", "mmproj_sha256": "0" * 64}
    with pytest.raises(BundleError, match="differs from the catalog entry's pinned"):
        build_manifest([("vl", table, [(1, model_sha), (2, "1" * 64)])], "test")
