"""Offline bundles end to end: keygen, export, verify, import (file and stdin), signatures,
idempotence, catalog merging; through the real CLI and a real store on disk."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import tomlkit

from appliance.config import load_catalog
from appliance.store.core import Store
from test_bundle_kit import Site, cli, cli_subprocess, dest, members, source, tree_digest  # noqa: F401

from test_bundle_kit import Source


def _installed(site: Site, model_id: str) -> list[bytes]:
    catalog = load_catalog(site.models)
    paths = Store.open(site.store).model_paths(model_id, catalog.models[model_id])
    assert paths is not None, f"{model_id} not installed"
    return [p.read_bytes() for p in paths]


def _record(site: Site, model_id: str) -> dict:
    return json.loads((site.store / "manifests" / f"{model_id}.json").read_text())


def test_keygen_writes_a_private_0600_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    key = tmp_path / "k"
    rc, out, err = cli("bundle", "keygen", str(key))
    assert rc == 0, err
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert Path(f"{key}.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert "ed25519:" in out
    before = key.read_bytes()
    rc, _, err = cli("bundle", "keygen", str(key))
    assert rc == 2 and "already exists" in err and err.count("\n") == 1
    assert key.read_bytes() == before


def test_bundle_layout_manifest_first_then_signature_then_files_in_order(source: Source) -> None:
    items = members(source.signed)
    names = [ti.name for ti, _ in items]
    assert names == [
        "manifest.json",
        "manifest.sig",
        "models/tiny-a/tiny-a.gguf",
        "models/tiny-split/tiny-split-00001-of-00003.gguf",
        "models/tiny-split/tiny-split-00002-of-00003.gguf",
        "models/tiny-split/tiny-split-00003-of-00003.gguf",
    ]
    manifest = json.loads(items[0][1])
    assert manifest["format_version"] == 1 and manifest["appliance_version"]
    a, split = manifest["models"]
    assert a["id"] == "tiny-a" and a["catalog"]["aliases"] == ["small"] and a["catalog"]["context"] == 512
    assert "parallel" not in split["catalog"]  # the table's keys as written, no defaults added
    assert [f["size"] for f in split["files"]] == [len(s) for s in source.originals["tiny-split"]]
    assert all(ti.isreg() for ti, _ in items)


def test_round_trip_signed_bundle_from_a_file(source: Source, dest: Site) -> None:
    rc, out, err = cli("bundle", "verify", str(source.signed), "--trust", str(source.pub))
    assert rc == 0, err
    assert f"signature good (trusted key {source.fingerprint})" in out
    rc, out, err = cli("bundle", "import", str(source.signed), "--trust", str(source.pub), *dest.args())
    assert rc == 0, err
    for model_id, shards in source.originals.items():
        assert _installed(dest, model_id) == shards
        rec = _record(dest, model_id)
        assert rec["bundle_signer"] == source.fingerprint
        assert rec["verified_at"] is not None
    text = dest.models.read_text()
    assert text.startswith("# Site catalog: hand-written, comments must survive imports.\n")
    assert "[other]  # a model that is not in any bundle" in text
    doc = tomlkit.parse(text).unwrap()
    src = tomlkit.parse(source.site.models.read_text()).unwrap()
    assert doc["tiny-a"] == src["tiny-a"] and doc["tiny-split"] == src["tiny-split"]
    states = {m: Store.open(dest.store).state(m, c).state for m, c in load_catalog(dest.models).models.items()}
    assert states == {"other": "missing", "tiny-a": "verified", "tiny-split": "verified"}


def test_round_trip_unsigned_bundle_from_stdin(source: Source, dest: Site) -> None:
    with source.bundle.open("rb") as f:
        p = cli_subprocess("bundle", "import", "-", *dest.args(), stdin=f)
    assert p.returncode == 0, p.stderr
    assert b"unsigned" in p.stdout
    for model_id, shards in source.originals.items():
        assert _installed(dest, model_id) == shards
        assert _record(dest, model_id)["bundle_signer"] is None


def test_verify_from_stdin_lists_every_file(source: Source) -> None:
    with source.bundle.open("rb") as f:
        p = cli_subprocess("bundle", "verify", "-", stdin=f)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count(b"sha256:") == 4


def test_signed_bundle_without_trust_imports_but_records_no_signer(source: Source, dest: Site) -> None:
    rc, out, err = cli("bundle", "import", str(source.signed), *dest.args())
    assert rc == 0, err
    assert "signature not checked" in out
    assert _record(dest, "tiny-a")["bundle_signer"] is None


def test_wrong_trusted_key_is_refused(source: Source, dest: Site, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    assert cli("bundle", "keygen", str(other))[0] == 0
    before = tree_digest(dest.store)
    rc, _, err = cli("bundle", "import", str(source.signed), "--trust", f"{other}.pub", *dest.args())
    assert rc == 1 and "manifest.sig does not match manifest.json" in err
    assert tree_digest(dest.store) == before


def test_importing_the_same_bundle_twice_changes_nothing(source: Source, dest: Site) -> None:
    assert cli("bundle", "import", str(source.signed), "--trust", str(source.pub), *dest.args())[0] == 0
    before, catalog = tree_digest(dest.store), dest.models.read_bytes()
    rc, out, err = cli("bundle", "import", str(source.signed), "--trust", str(source.pub), *dest.args())
    assert rc == 0, err
    assert "0 blob(s) written, 4 already present" in out
    assert tree_digest(dest.store) == before  # records (verified_at included) untouched
    assert dest.models.read_bytes() == catalog
    # Unsigned the second time: the earlier signer's record stands.
    assert cli("bundle", "import", str(source.bundle), *dest.args())[0] == 0
    assert tree_digest(dest.store) == before and dest.models.read_bytes() == catalog


def test_a_rotten_blob_in_the_store_is_replaced_by_the_bundles_copy(source: Source, dest: Site) -> None:
    assert cli("bundle", "import", str(source.only_a), *dest.args())[0] == 0
    blob = next((dest.store / "blobs").iterdir())
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    rc, out, err = cli("bundle", "import", str(source.only_a), *dest.args())
    assert rc == 0, err
    assert "1 blob(s) written" in out
    assert _installed(dest, "tiny-a") == source.originals["tiny-a"]


def test_an_identical_entry_is_fine_a_different_one_needs_replace(source: Source, dest: Site) -> None:
    dest.models.write_text(dest.models.read_text() + (
        "\n# kept by hand\n[tiny-a]\nsource = \"hf://example/tiny-a-GGUF/tiny-a.gguf\"\n"
        "revision = \"0123456789abcdef0123456789abcdef01234567\"\ncontext = 2048  # different\n"
    ))
    before, catalog = tree_digest(dest.store), dest.models.read_bytes()
    rc, _, err = cli("bundle", "import", str(source.only_a), *dest.args())
    assert rc == 1 and "'tiny-a' already exists" in err and "--replace" in err
    assert tree_digest(dest.store) == before and dest.models.read_bytes() == catalog

    rc, out, err = cli("bundle", "import", str(source.only_a), "--replace", *dest.args())
    assert rc == 0, err
    assert "replaced in" in out
    text = dest.models.read_text()
    assert "# kept by hand" in text and "# Site catalog" in text
    assert load_catalog(dest.models).models["tiny-a"].context == 512

    # Same settings written differently (defaults spelled out) count as identical.
    text = text.replace("context = 512", "context = 512\nkeep_alive = \"5m\"")
    dest.models.write_text(text)
    rc, out, err = cli("bundle", "import", str(source.only_a), *dest.args())
    assert rc == 0, err
    assert dest.models.read_text() == text


def test_an_alias_clash_with_the_site_catalog_is_refused(source: Source, dest: Site) -> None:
    dest.models.write_text(dest.models.read_text() + 'aliases = ["small"]\n')
    before, catalog = tree_digest(dest.store), dest.models.read_bytes()
    rc, _, err = cli("bundle", "import", str(source.only_a), "--replace", *dest.args())
    assert rc == 1 and "duplicate alias 'small'" in err
    assert tree_digest(dest.store) == before and dest.models.read_bytes() == catalog


def test_import_creates_the_catalog_when_the_site_has_none(source: Source, tmp_path: Path) -> None:
    site = Site(tmp_path, tmp_path / "appliance.toml", tmp_path / "new" / "models.toml", tmp_path / "store")
    site.config.write_text(f'[store]\npath = "{site.store}"\n')
    rc, _, err = cli("bundle", "import", str(source.only_a), "--config", str(site.config))
    assert rc == 0, err
    # No models.toml anywhere: the user's config dir gets one.
    created = Path.home() / ".config" / "appliance" / "models.toml"
    assert list(load_catalog(created).models) == ["tiny-a"]


def test_export_refuses_a_model_missing_from_the_store(source: Source, tmp_path: Path) -> None:
    site = Site(tmp_path, tmp_path / "appliance.toml", source.site.models, tmp_path / "empty-store")
    site.config.write_text(f'[store]\npath = "{site.store}"\n')
    rc, _, err = cli("bundle", "export", "tiny-split", "-o", str(tmp_path / "x.tar"), *site.args())
    assert rc == 1 and "'tiny-split' is missing from the store" in err
    assert not (tmp_path / "x.tar").exists()
    rc, _, err = cli("bundle", "export", "nope", "-o", str(tmp_path / "x.tar"), *site.args())
    assert rc == 2 and "unknown model 'nope'" in err


def test_export_fails_when_a_blob_no_longer_matches_and_leaves_no_file(source: Source, tmp_path: Path) -> None:
    import shutil

    site = Site(tmp_path, tmp_path / "appliance.toml", source.site.models, tmp_path / "store")
    shutil.copytree(source.site.store, site.store)
    site.config.write_text(f'[store]\npath = "{site.store}"\n')
    last = Store.open(site.store).record("tiny-split").blobs[-1]  # type: ignore[union-attr]
    blob = site.store / "blobs" / f"sha256-{last.sha256}"
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    out = tmp_path / "out.tar"
    rc, _, err = cli("bundle", "export", "tiny-a", "tiny-split", "-o", str(out), *site.args())
    assert rc == 1 and "checksum mismatch" in err and last.sha256 in err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".out", "out"))) == []


def test_export_to_stdout_streams_a_valid_bundle(source: Source, dest: Site) -> None:
    exp = cli_subprocess("bundle", "export", "tiny-split", "-o", "-", "--sign", str(source.key), *source.site.args())
    assert exp.returncode == 0, exp.stderr
    assert b"exported tiny-split" in exp.stderr
    imp = cli_subprocess("bundle", "import", "-", "--trust", str(source.pub), *dest.args(), input=exp.stdout)
    assert imp.returncode == 0, imp.stderr
    assert _installed(dest, "tiny-split") == source.originals["tiny-split"]


def test_trust_takes_a_public_key_not_a_private_one(source: Source) -> None:
    rc, _, err = cli("bundle", "verify", str(source.signed), "--trust", str(source.key))
    assert rc == 2 and "private key" in err


def test_ls_shows_the_signer_of_signed_imports(source: Source, dest: Site) -> None:
    assert cli("bundle", "import", str(source.signed), "--trust", str(source.pub), *dest.args())[0] == 0
    rc, out, err = cli("ls", *dest.args())
    assert rc == 0, err
    header, *rows = out.splitlines()
    assert header.split()[-1] == "SIGNER"
    by_id = {r.split()[0]: r.split()[-1] for r in rows}
    assert by_id == {"other": "-", "tiny-a": source.fingerprint, "tiny-split": source.fingerprint}
    rc, out, _ = cli("ls", "--json", *dest.args())
    assert {r["id"]: r["signer"] for r in json.loads(out)}["tiny-a"] == source.fingerprint
