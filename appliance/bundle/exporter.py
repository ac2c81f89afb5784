"""`bundle export`: the store's blobs for some catalog models, streamed into one tar.

Nothing is copied first: the manifest is built from the store's records and blob sizes,
then each blob is read once, hashed while it streams, and the export fails if a blob no
longer matches the checksum it is stored under.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .. import __version__
from ..atomicfile import atomic_writer
from ..config import Catalog
from ..errors import BundleError, ConfigError, UsageError
from ..store.core import Store
from .manifest import Manifest, build_manifest, parse_manifest
from .signing import fingerprint, sign
from .tarstream import Progress, write_bundle

BLOB_PREFIX = "sha256-"


@dataclass(frozen=True)
class ExportPlan:
    manifest_bytes: bytes
    manifest: Manifest
    paths: list[Path]  # blob paths, in manifest file order


def plan_export(store: Store, catalog: Catalog, names: list[str]) -> ExportPlan:
    """Resolve names (ids or aliases) and collect each model's blobs in shard order."""
    tables = _raw_tables(catalog)
    ids: list[str] = []
    for name in names:
        hit = catalog.resolve(name)
        if hit is None:
            known = ", ".join(sorted(catalog.models)) or "none"
            raise UsageError(f"unknown model {name!r} (known: {known}; catalog {catalog.path})")
        if hit[0] not in ids:
            ids.append(hit[0])
    entries: list[tuple[str, dict[str, Any], list[tuple[int, str]]]] = []
    paths: list[Path] = []
    for model_id in ids:
        cfg = catalog.models[model_id]
        state = store.state(model_id, cfg)
        if state.paths is None:
            raise BundleError(f"model {model_id!r} is missing from the store; run `appliance pull {model_id}` first")
        shards = []
        for p in state.paths:
            # Blobs are content-addressed: the name is the checksum the bytes must still have.
            shards.append((p.stat().st_size, p.name.removeprefix(BLOB_PREFIX)))
        files = list(state.paths)
        mmproj = store.mmproj_path(model_id, cfg)
        if mmproj is not None:  # the projector travels with its model
            files.append(mmproj)
            shards.append((mmproj.stat().st_size, mmproj.name.removeprefix(BLOB_PREFIX)))
        entries.append((model_id, tables[model_id], shards))
        paths.extend(files)
    data = build_manifest(entries, __version__)
    return ExportPlan(data, parse_manifest(data), paths)


def _raw_tables(catalog: Catalog) -> dict[str, dict[str, Any]]:
    """The catalog's tables as written in models.toml (not with defaults filled in)."""
    if not catalog.exists:
        return {}
    try:
        with catalog.path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(str(catalog.path), "", f"cannot read: {e}") from None


def write_export(
    plan: ExportPlan, out: BinaryIO, key: Ed25519PrivateKey | None = None, progress: Progress | None = None
) -> str | None:
    """Stream the bundle into `out`; returns the signer's fingerprint when signed."""
    signature = sign(key, plan.manifest_bytes) if key else None
    files = [(bf, path) for (_, bf), path in zip(plan.manifest.files(), plan.paths)]
    write_bundle(out, plan.manifest_bytes, signature, files, mtime=int(time.time()), progress=progress)
    return fingerprint(key.public_key()) if key else None


def export_to_file(
    plan: ExportPlan, dest: Path, key: Ed25519PrivateKey | None = None, progress: Progress | None = None
) -> str | None:
    """Write beside `dest` and rename at the end: a failed export leaves no half bundle."""
    dest = dest.expanduser()
    if dest.is_dir():
        raise BundleError(f"{dest} is a directory; -o takes a file name")
    try:
        with atomic_writer(dest, new_mode=0o644, keep_mask=None) as f:
            return write_export(plan, f, key, progress)
    except OSError as e:
        raise BundleError(f"cannot write {dest}: {e.strerror or e}") from None
