"""Shared pieces of the bundle tests: a source site with two tiny models in its store (one of
them split into three shard files), bundles exported from it once per session, and helpers to
run the CLI and fingerprint a whole store tree. (No tests here.)"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.config import load_catalog
from appliance.store.core import Store
from appliance.store.records import BlobRef
from cli_support import run_cli

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Site:
    dir: Path
    config: Path
    models: Path
    store: Path

    def args(self) -> list[str]:
        return ["--config", str(self.config), "--models", str(self.models)]


def make_site(d: Path, models_toml: str = "") -> Site:
    d.mkdir(parents=True, exist_ok=True)
    store = d / "store"
    config = d / "appliance.toml"
    config.write_text(f'[store]\npath = "{store}"\n')
    models = d / "models.toml"
    models.write_text(models_toml)
    return Site(d, config, models, store)


def cli(*argv: str) -> tuple[int, str, str]:
    """Run `appliance ARGV` in this process; returns (exit code, stdout, stderr)."""
    r = run_cli(*argv)
    return r.returncode, r.stdout, r.stderr


def cli_subprocess(*argv: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "appliance", *argv], cwd=ROOT, capture_output=True, **kwargs)  # type: ignore[call-overload]


def tree_digest(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry under root except tmp/: kind, permission bits, content hash."""
    out: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir == Path("."):
            dirnames[:] = sorted(n for n in dirnames if n != "tmp")
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(rel_dir / name)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), "")
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def split_bytes(data: bytes, n: int) -> list[bytes]:
    step = -(-len(data) // n)
    return [data[i * step : (i + 1) * step] for i in range(n)]


@dataclass(frozen=True)
class Source:
    site: Site
    key: Path
    pub: Path
    fingerprint: str
    originals: dict[str, list[bytes]]  # model id -> shard contents
    bundle: Path  # tiny-a + tiny-split, unsigned
    signed: Path  # the same, signed with `key`
    only_a: Path  # tiny-a alone, unsigned


SOURCE_MODELS = """\
# The connected machine's catalog.
[tiny-a]
source = "hf://example/tiny-a-GGUF/tiny-a.gguf"
revision = "0123456789abcdef0123456789abcdef01234567"
context = 512
parallel = 2
aliases = ["small"]

[tiny-split]
source = "hf://example/tiny-split-GGUF/tiny-split-00001-of-00003.gguf"
sha256 = [{shas}]
context = 256
"""


@pytest.fixture(scope="session")
def source(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Source:
    """A connected machine: both models verified in its store, and bundles exported from it."""
    d = tmp_path_factory.mktemp("source")
    a = tiny_models["a"].read_bytes()
    shards = split_bytes(tiny_models["b"].read_bytes(), 3)
    shas = [hashlib.sha256(s).hexdigest() for s in shards]
    site = make_site(d, SOURCE_MODELS.format(shas=", ".join(f'"{s}"' for s in shas)))
    store = Store.open(site.store)
    catalog = load_catalog(site.models)
    cfg_a, cfg_s = catalog.models["tiny-a"], catalog.models["tiny-split"]
    sha_a = store.install_stream([a], None)
    store.new_record("tiny-a", cfg_a, [BlobRef(sha_a, len(a), cfg_a.source)])
    refs = []
    for data, src in zip(shards, cfg_s.shard_sources):
        refs.append(BlobRef(store.install_stream([data], None), len(data), src))
    store.new_record("tiny-split", cfg_s, refs)

    key = d / "signing.key"
    rc, out, err = cli("bundle", "keygen", str(key))
    assert rc == 0, err
    fp = out.split("(")[-1].rstrip(")\n")
    bundles = {}
    for name, extra in (("both.tar", []), ("signed.tar", ["--sign", str(key)])):
        rc, _, err = cli("bundle", "export", "tiny-a", "tiny-split", "-o", str(d / name), *extra, *site.args())
        assert rc == 0, err
        bundles[name] = d / name
    rc, _, err = cli("bundle", "export", "small", "-o", str(d / "a.tar"), *site.args())  # by alias
    assert rc == 0, err
    return Source(site, key, Path(f"{key}.pub"), fp, {"tiny-a": [a], "tiny-split": shards},
                  bundles["both.tar"], bundles["signed.tar"], d / "a.tar")


DEST_MODELS = """\
# Site catalog: hand-written, comments must survive imports.
[other]  # a model that is not in any bundle
source = "hf://example/other/other.gguf"
context = 1024
"""


@pytest.fixture()
def dest(tmp_path: Path) -> Site:
    """An air-gapped machine with a hand-written catalog and an opened (empty) store."""
    site = make_site(tmp_path / "dest", DEST_MODELS)
    Store.open(site.store)
    return site


def members(bundle: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(bundle) as t:
        return [(ti, t.extractfile(ti).read()) for ti in t.getmembers()]  # type: ignore[union-attr]


def write_tar(path: Path, items: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """Craft a tar from (header, data) pairs exactly as given (data None: no payload)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for ti, data in items:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path
