"""Hostile and broken bundles, each crafted with tarfile: `bundle import` refuses with one clear
line and exit 1, `bundle verify` says the same, and the store (tmp/ aside, which must be empty
again) and models.toml stay byte-identical."""

from __future__ import annotations

import copy
import json
import tarfile
from pathlib import Path
from typing import Callable

import pytest

from test_bundle_kit import Site, Source, cli, dest, members, source, tree_digest, write_tar  # noqa: F401

Items = list[tuple[tarfile.TarInfo, bytes | None]]


def _reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    return ti, data


def _special(name: str, kind: bytes, **attrs: object) -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    for k, v in attrs.items():
        setattr(ti, k, v)
    return ti, None


def _pax(ti: tarfile.TarInfo, headers: dict[str, str]) -> tarfile.TarInfo:
    ti = copy.copy(ti)
    ti.pax_headers = headers
    return ti


def _with_manifest(items: Items, edit: Callable[[dict], None]) -> Items:
    doc = json.loads(items[0][1])  # type: ignore[arg-type]
    edit(doc)
    data = json.dumps(doc).encode()
    ti = copy.copy(items[0][0])
    ti.size = len(data)
    return [(ti, data), *items[1:]]


def _set(path: list[object], value: object) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        node = doc
        for p in path[:-1]:
            node = node[p]  # type: ignore[index]
        node[path[-1]] = value  # type: ignore[index]

    return edit


def _flip_last_byte(items: Items) -> Items:
    ti, data = items[-1]
    assert data is not None
    return [*items[:-1], (ti, data[:-1] + bytes([data[-1] ^ 0xFF]))]


def _rename_id(new_id: str) -> Callable[[Items], Items]:
    def build(items: Items) -> Items:
        def edit(doc: dict) -> None:
            m = doc["models"][0]
            m["id"] = new_id
            for f in m["files"]:
                f["name"] = f["name"].replace("models/tiny-a/", f"models/{new_id}/")

        out = _with_manifest(items, edit)
        ti = copy.copy(out[1][0])
        ti.name = ti.name.replace("models/tiny-a/", f"models/{new_id}/")
        return [out[0], (ti, out[1][1]), *out[2:]]

    return build


# (name, how to derive the hostile members from the unsigned bundle's, expected message)
CASES: list[tuple[str, Callable[[Items], Items], str]] = [
    ("absolute path", lambda it: [it[0], _reg("/etc/cron.d/evil", b"x"), *it[1:]], "has an absolute path"),
    ("dot-dot path", lambda it: [it[0], _reg("models/../../escape.gguf", b"x"), *it[1:]], "has a '..' component"),
    ("dot-dot in a model id", _rename_id("../evil"), "has a '..' component"),
    ("backslash in a name", lambda it: [it[0], _reg("models\\tiny-a.gguf", b"x"), *it[1:]], "backslash"),
    ("symlink", lambda it: [it[0], _special(it[1][0].name, tarfile.SYMTYPE, linkname="/etc/passwd"), *it[2:]],
     "is a symbolic link"),
    ("hard link", lambda it: [it[0], _special(it[1][0].name, tarfile.LNKTYPE, linkname="manifest.json"), *it[2:]],
     "is a hard link"),
    ("character device", lambda it: [it[0], _special("models/tiny-a/tiny-a.gguf", tarfile.CHRTYPE, devmajor=1,
                                                     devminor=3), *it[2:]], "is a character device"),
    ("block device", lambda it: [it[0], _special("models/tiny-a/tiny-a.gguf", tarfile.BLKTYPE, devmajor=8),
                                 *it[2:]], "is a block device"),
    ("fifo", lambda it: [it[0], _special("models/tiny-a/tiny-a.gguf", tarfile.FIFOTYPE), *it[2:]], "is a FIFO"),
    ("directory", lambda it: [it[0], _special("models", tarfile.DIRTYPE), *it[1:]], "is a directory"),
    ("duplicate file", lambda it: [it[0], it[1], it[1], *it[2:]], "'models/tiny-a/tiny-a.gguf' appears twice"),
    ("duplicate manifest", lambda it: [*it, it[0]], "'manifest.json' appears twice"),
    ("unlisted file at the end", lambda it: [*it, _reg("models/tiny-a/extra.gguf", b"x")], "is not in the manifest"),
    ("unlisted file in the middle", lambda it: [it[0], _reg("README", b"hi"), *it[1:]],
     "'README' is not in the manifest"),
    ("manifest not first", lambda it: [it[1], it[0], *it[2:]], "manifest.json must be the first member"),
    ("files out of order", lambda it: [*it[:3], it[4], it[3]], "is out of manifest order"),
    ("manifest over 1 MiB", lambda it: [_reg("manifest.json", it[0][1] + b" " * (1024 * 1024)), *it[1:]],
     "over the 1048576-byte limit"),
    ("manifest not JSON", lambda it: [_reg("manifest.json", b"{nope"), *it[1:]], "not valid JSON"),
    ("unknown format version", lambda it: _with_manifest(it, _set(["format_version"], 2)),
     "unsupported bundle format_version 2"),
    ("invalid catalog entry", lambda it: _with_manifest(it, _set(["models", 0, "catalog", "source"], "ftp://x/y.gguf")),
     "not a valid catalog entry: manifest.json: tiny-a.source"),
    ("unknown catalog key", lambda it: _with_manifest(it, _set(["models", 0, "catalog", "gpu_layerz"], 3)),
     "tiny-a.gpu_layerz: unknown key"),
    ("file list does not match the shards", lambda it: _with_manifest(it, lambda d: d["models"][1]["files"].pop()),
     "must list files"),
    ("pinned sha256 contradicts the file's", lambda it: _with_manifest(
        it, _set(["models", 1, "files", 0, "sha256"], "0" * 64)), "differs from the catalog entry's pinned"),
    ("size mismatch", lambda it: _with_manifest(it, _set(["models", 0, "files", 0, "size"], len(it[1][1]) + 1)),
     "the manifest says"),
    ("checksum mismatch in the last file", _flip_last_byte,
     "checksum mismatch for models/tiny-split/tiny-split-00003-of-00003.gguf in the bundle"),
    ("null in a catalog entry", lambda it: _with_manifest(it, _set(["models", 0, "catalog", "chat_template"], None)),
     "catalog key 'chat_template' is null"),
    ("huge pax header", lambda it: [it[0], (_pax(it[1][0], {"comment": "x" * (2 << 20)}), it[1][1]), *it[2:]],
     "extended tar header of"),
    ("missing files (ends early)", lambda it: it[:3], "bundle ends before models/tiny-split/tiny-split-00002"),
]


@pytest.fixture()
def populated(source: Source, dest: Site) -> Site:
    """The site already holds tiny-a (so the refusals must leave existing state alone too)."""
    rc, _, err = cli("bundle", "import", str(source.only_a), *dest.args())
    assert rc == 0, err
    return dest


def _assert_refused(site: Site, bundle: Path, message: str, *extra: str) -> None:
    before, catalog = tree_digest(site.store), site.models.read_bytes()
    rc, out, err = cli("bundle", "import", str(bundle), *extra, *site.args())
    assert rc == 1, (out, err)
    assert message in err, err
    assert err.startswith("appliance: error: ") and err.count("\n") == 1
    assert tree_digest(site.store) == before
    assert site.models.read_bytes() == catalog
    assert list((site.store / "tmp").iterdir()) == []
    rc, _, verr = cli("bundle", "verify", str(bundle), *extra)
    assert rc == 1 and message in verr


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_bundle_is_refused(case: tuple, source: Source, populated: Site, tmp_path: Path) -> None:
    _, build, message = case
    bundle = write_tar(tmp_path / "hostile.tar", build(members(source.bundle)))
    _assert_refused(populated, bundle, message)


def test_truncated_in_the_middle_of_the_last_file(source: Source, populated: Site, tmp_path: Path) -> None:
    with tarfile.open(source.bundle) as t:
        last = t.getmembers()[-1]
    data = source.bundle.read_bytes()[: last.offset_data + last.size // 2]
    bundle = tmp_path / "cut.tar"
    bundle.write_bytes(data)
    _assert_refused(populated, bundle, "truncated")


@pytest.mark.parametrize("junk", [b"", b"this is not a tar file" * 100], ids=["empty", "garbage"])
def test_not_a_tar(junk: bytes, populated: Site, tmp_path: Path) -> None:
    bundle = tmp_path / "junk.tar"
    bundle.write_bytes(junk)
    _assert_refused(populated, bundle, "not a readable bundle")


def test_signature_over_a_different_manifest(source: Source, populated: Site, tmp_path: Path) -> None:
    items = members(source.signed)
    tampered = _with_manifest(items, _set(["models", 0, "catalog", "context"], 65536))
    bundle = write_tar(tmp_path / "tampered.tar", tampered)
    _assert_refused(populated, bundle, "manifest.sig does not match manifest.json", "--trust", str(source.pub))


def test_signature_that_is_not_base64(source: Source, populated: Site, tmp_path: Path) -> None:
    items = members(source.signed)
    bundle = write_tar(tmp_path / "badsig.tar", [items[0], _reg("manifest.sig", b"!!not base64!!\n"), *items[2:]])
    _assert_refused(populated, bundle, "manifest.sig is not base64", "--trust", str(source.pub))


def test_unsigned_bundle_with_trust(source: Source, populated: Site) -> None:
    _assert_refused(populated, source.bundle, "bundle is not signed", "--trust", str(source.pub))


def test_signature_moved_after_the_files(source: Source, populated: Site, tmp_path: Path) -> None:
    items = members(source.signed)
    bundle = write_tar(tmp_path / "late-sig.tar", [items[0], *items[2:], items[1]])
    _assert_refused(populated, bundle, "bundle is not signed", "--trust", str(source.pub))
    rc, _, err = cli("bundle", "import", str(bundle), *populated.args())
    assert rc == 1 and "manifest.sig must come right after manifest.json" in err
