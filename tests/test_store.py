"""Store behaviour on real files: verify, import, rm of shared blobs, tmp cleanup, locks."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.config import ModelConfig, load_settings
from appliance.errors import ChecksumMismatch, ModelInUse
from appliance.store import Store


def setup_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    store = tmp_path / "store"
    monkeypatch.setenv("APPLIANCE_STORE", str(store))
    return store


def test_import_then_ls_keeps_comments(
    tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_store(tmp_path, monkeypatch)
    models = tmp_path / "models.toml"
    models.write_text("# my catalog\n\n[other]  # keep me\nsource = \"hf://o/r/x.gguf\"\n")
    assert main(["import", str(tiny_gguf), "--name", "tiny"]) == 0
    text = models.read_text()
    assert text.startswith("# my catalog\n\n[other]  # keep me\n")
    sha = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert f'source = "file://{tiny_gguf}"' in text and f'sha256 = "{sha}"' in text
    capsys.readouterr()
    assert main(["ls", "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["tiny"]["state"] == "verified" and rows["tiny"]["quantization"] == "F32"
    assert rows["tiny"]["loaded"] is None and rows["other"]["state"] == "missing"
    assert main(["ls"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["ID", "STATE", "LOADED", "SIZE", "QUANT", "CONTEXT", "PARALLEL"]
    assert out[2].split()[:2] == ["tiny", "verified"] and out[2].split()[3] == "?"
    # an existing name is refused, the file unchanged
    assert main(["import", str(tiny_gguf), "--name", "tiny"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert models.read_text() == text


def test_import_creates_catalog_when_absent(
    tmp_path: Path, tiny_gguf: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup_store(tmp_path, monkeypatch)
    assert main(["import", str(tiny_gguf), "--name", "t"]) == 0
    created = isolated_env / ".config" / "appliance" / "models.toml"
    assert "t" in load_settings(models=created).catalog.models


def test_verify_catches_a_flipped_byte(
    tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = setup_store(tmp_path, monkeypatch)
    assert main(["import", str(tiny_gguf), "--name", "tiny"]) == 0
    assert main(["verify"]) == 0
    (blob,) = (store / "blobs").iterdir()
    with pytest.raises(PermissionError) if os.geteuid() != 0 else _nothing():
        blob.open("r+b")
    os.chmod(blob, 0o644)
    with blob.open("r+b") as f:
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 1]))
    os.chmod(blob, 0o444)
    capsys.readouterr()
    assert main(["ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["state"] == "present"  # changed since hashed
    assert main(["verify", "tiny"]) == 1
    err = capsys.readouterr().err
    assert "checksum mismatch for tiny" in err and "expected sha256" in err
    assert not blob.exists()  # nothing unverified stays where the daemon would load it


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def test_rm_keeps_blob_shared_with_another_entry(tmp_path: Path, tiny_gguf: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    sha = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    models = tmp_path / "models.toml"
    models.write_text(
        f'# mine\n[a]\nsource = "file://{tiny_gguf}"\nsha256 = "{sha}"\n'
        f'[b]\nsource = "file://{tiny_gguf}"\nsha256 = "{sha}"\naliases = ["bee"]\n'
        f'[c]\nsource = "file://{tiny_gguf}"\nsha256 = "{sha}"\n'
    )
    env_store = tmp_path / "store"
    os.environ["APPLIANCE_STORE"] = str(env_store)
    try:
        assert main(["pull"]) == 0
        blob = env_store / "blobs" / f"sha256-{sha}"
        capsys.readouterr()
        assert main(["rm", "a"]) == 0
        assert blob.exists() and not (env_store / "manifests" / "a.json").exists()
        out = capsys.readouterr().out
        assert f"a: kept sha256-{sha[:12]}…, also used by b, c" in out and "removed its entry" in out
        assert "[a]" not in models.read_text() and models.read_text().startswith("# mine\n")
        assert main(["rm", "--keep-entry", "c"]) == 0
        assert "[c]" in models.read_text() and "--keep-entry" in capsys.readouterr().out
        assert main(["rm", "bee"]) == 0  # alias resolves
        assert not blob.exists() and "[b]" not in models.read_text()
    finally:
        del os.environ["APPLIANCE_STORE"]


def test_rm_refuses_while_loaded(tmp_path: Path, tiny_gguf: Path) -> None:
    store = Store.open(tmp_path / "s", loaded_models=lambda: {"a"})
    cfg = ModelConfig(source=f"file://{tiny_gguf}")
    from appliance.config import Catalog

    with pytest.raises(ModelInUse):
        store.remove("a", Catalog({"a": cfg}, tmp_path / "m.toml"))


def test_unknown_model_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "models.toml").write_text('[a]\nsource = "hf://o/r/a.gguf"\n')
    assert main(["verify", "zzz"]) == 2
    assert "unknown model 'zzz' (known: a;" in capsys.readouterr().err


def test_tmp_cleaned_on_open_except_live_writers(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    dead = store.tmp / "123-dead.tmp"
    dead.write_bytes(b"x")
    live = store.tmp / "456-live.tmp"
    live.write_bytes(b"y")
    fd = os.open(live, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    partial = store.partial_path("abc")
    partial.write_bytes(b"z")
    try:
        Store.open(tmp_path / "s")
        assert not dead.exists() and live.exists() and partial.exists()
    finally:
        os.close(fd)
    Store.open(tmp_path / "s")
    assert not live.exists()


def test_install_stream_mismatch_leaves_nothing(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    with pytest.raises(ChecksumMismatch):
        store.install_stream([b"abc", b"def"], "0" * 64)
    assert list(store.blobs.iterdir()) == [] and list(store.tmp.iterdir()) == []
    sha = store.install_stream(iter([b"abc", b"def"]), None)
    assert sha == hashlib.sha256(b"abcdef").hexdigest()
    assert store.blob_path(sha).read_bytes() == b"abcdef"


def test_state_and_model_paths(tmp_path: Path, tiny_gguf: Path) -> None:
    store = Store.open(tmp_path / "s")
    sha = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    cfg = ModelConfig(source=f"file://{tiny_gguf}", sha256=sha)
    assert store.state("m", cfg).state == "missing" and store.model_paths("m", cfg) is None
    with tiny_gguf.open("rb") as f:
        store.install_stream(f, sha)
    assert store.state("m", cfg).state == "present"  # the blob is there, never hashed for "m"
    st = store.verify("m", cfg)
    assert st.state == "verified" and st.paths == [store.blob_path(sha)]
    rec = store.record("m")
    assert rec and rec.bundle_signer is None and rec.blobs[0].size == tiny_gguf.stat().st_size


@pytest.mark.parametrize("name", ["model.bin", "tiny-00001-of-00002.gguf"])
def test_import_of_a_file_the_catalog_would_refuse_is_a_usage_error_and_stores_nothing(
    name: str, tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = setup_store(tmp_path, monkeypatch)
    models = tmp_path / "models.toml"
    models.write_text("# mine\n")
    bad = tmp_path / name
    bad.write_bytes(tiny_gguf.read_bytes())
    capsys.readouterr()
    assert main(["import", str(bad), "--name", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("appliance: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "source" in err
    assert not any((store / "blobs").glob("*")) if (store / "blobs").exists() else True  # no orphan blob
    assert models.read_text() == "# mine\n"
