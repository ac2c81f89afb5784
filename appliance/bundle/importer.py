"""`bundle import`: verify everything while streaming into the store's tmp/, then install.

Order of effects, so that every interruption leaves a consistent store:
  1. bytes go only into `<store>/tmp/` (flock-held temp files, which the next Store.open
     deletes if this process dies); nothing else in the store is touched while reading;
  2. after the last file and the end of the tar checked out: renames into `blobs/`;
  3. then the per-model records (with the signer's fingerprint);
  4. then models.toml: the commit point. Steps 2-4 run under an undo journal
     (store/journal.py): an exception undoes 2 and 3 at once, a kill at the next Store.open.
A blob the store already has is re-hashed instead of written again, so a second import of
the same bundle writes nothing at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..atomicfile import lock_path
from ..errors import BundleError
from ..store import blobs as store_blobs
from ..store.core import Store
from ..store.journal import Journal, install_journal, undo
from ..store.records import BlobRef, ModelRecord
from .catalog_merge import check_merge, merge_catalog
from .manifest import BundleModel, Manifest
from .tarstream import BundleReader, Progress


@dataclass
class ImportResult:
    manifest: Manifest
    signer: str | None
    signed: bool
    blobs_written: list[str] = field(default_factory=list)
    blobs_present: list[str] = field(default_factory=list)
    records_written: list[str] = field(default_factory=list)
    catalog_added: list[str] = field(default_factory=list)
    catalog_replaced: list[str] = field(default_factory=list)
    catalog_unchanged: list[str] = field(default_factory=list)


class _TempArea:
    """Temp files for this import in `<store>/tmp/`, each flock-held while this process lives
    (Store.open's cleaner skips locked files), all deleted unless adopted into blobs/."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.files: dict[str, Path] = {}  # sha256 -> verified temp file
        self._created: list[Path] = []  # every temp file, verified or not
        self._fds: list[int] = []

    def write(self, sha256: str, chunks: Iterator[bytes]) -> None:
        self.store.tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.store.tmp, prefix=f"{os.getpid()}-bundle-", suffix=".tmp")
        self._fds.append(fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = Path(name)
        self._created.append(path)
        with os.fdopen(os.dup(fd), "wb") as f:
            for block in chunks:  # raises at the end on a size or checksum mismatch
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        self.files[sha256] = path

    def adopt_all(self) -> None:
        for sha, path in self.files.items():
            store_blobs.adopt(path, self.store.blobs, sha)
            self._created.remove(path)
        self.files.clear()

    def close(self) -> None:
        for path in self._created:
            path.unlink(missing_ok=True)
        self._created.clear()
        self.files.clear()
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


def _blob_is_good(store: Store, sha256: str, size: int) -> bool:
    """Present with the right size and contents (a rotten blob is replaced by the bundle's)."""
    return store.has_blob(sha256, size) and store_blobs.hash_file(store.blob_path(sha256)) == sha256


def import_bundle(
    stream: BinaryIO,
    store: Store,
    catalog_path: Path,
    *,
    trust: Ed25519PublicKey | None = None,
    replace_entries: bool = False,
    progress_factory: Callable[[int], Progress] | None = None,
) -> ImportResult:
    """Verify and install a bundle; on any problem raise and leave the store as it was."""
    check_catalog_writable(catalog_path)  # before any byte: failing at the end would be half done
    reader = BundleReader(stream, trust)
    manifest = reader.head()
    note = _note(manifest, reader)
    entries = [(m.id, m.catalog, m.config) for m in manifest.models]
    check_merge(catalog_path, entries, replace=replace_entries, note=note)  # conflicts before any byte

    temps = _TempArea(store)
    result = ImportResult(manifest, reader.signer, reader.signed)
    try:
        need = sum(bf.size for _, bf in manifest.files() if not store.has_blob(bf.sha256, bf.size))
        store.check_disk(need)
        progress: Progress | None = progress_factory(manifest.total_bytes) if progress_factory else None
        handled: set[str] = set()
        for _, bf, chunks in reader.files(progress):
            if bf.sha256 in handled or _blob_is_good(store, bf.sha256, bf.size):
                for _ in chunks:  # still read and hashed: the bundle itself must verify
                    pass
                if bf.sha256 not in temps.files and bf.sha256 not in result.blobs_present:
                    result.blobs_present.append(bf.sha256)
            else:
                temps.write(bf.sha256, chunks)
                result.blobs_written.append(bf.sha256)
            handled.add(bf.sha256)
        reader.end()

        # Everything verified: install. Locks are taken only now, so a refused bundle
        # leaves not even a lock file behind.
        with contextlib.ExitStack() as locks:
            for m in manifest.models:
                locks.enter_context(store.lock(m.id))
            for sha in result.blobs_present:
                if not store.has_blob(sha):
                    raise BundleError(f"blob sha256-{sha} vanished from the store during the import; run it again")
            # Blobs, records, catalog: a journal undoes the first two unless the catalog
            # (the commit point) was written, also after a kill (the next Store.open).
            journal = Journal.begin(store.tmp, install_journal(
                catalog_path, {m.id: m.config.source for m in manifest.models},
                [store.blob_path(sha) for sha in temps.files if not store.has_blob(sha)],
                store.manifests, [m.id for m in manifest.models],
            ))
            try:
                temps.adopt_all()
                for m in manifest.models:
                    if _install_record(store, m, reader.signer):
                        result.records_written.append(m.id)
                merge = merge_catalog(catalog_path, entries, replace=replace_entries, note=note)
            except BaseException:
                undo(journal.data)
                raise
            finally:
                journal.end()
        result.catalog_added, result.catalog_replaced = merge.added, merge.replaced
        result.catalog_unchanged = merge.unchanged
        return result
    finally:
        temps.close()


def _access(path: Path, mode: int) -> bool:
    """os.access for the effective user (sudo, setuid) where the platform can tell."""
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)


def check_catalog_writable(catalog_path: Path) -> None:
    """The catalog is written last (atomic rename in its directory, under `<catalog>.lock`):
    find out now whether that will work, so a user who may not write it (the service user
    with /etc/appliance root:appliance 0750) is refused before blobs and records change."""
    lock = lock_path(catalog_path)
    parent = catalog_path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the import creates missing directories below this one
    ok = _access(parent, os.W_OK | os.X_OK) and (not lock.exists() or _access(lock, os.R_OK))
    if not ok:
        raise BundleError(
            f"cannot write the catalog {catalog_path} (no write access to {parent} for this user); "
            "run the import as root (sudo appliance bundle import ...) or as the catalog's owner"
        )


def _note(manifest: Manifest, reader: BundleReader) -> str:
    who = f", signed by {reader.signer}" if reader.signer else ""
    return f"Imported from an offline bundle created {manifest.created}{who}."


def _install_record(store: Store, model: BundleModel, signer: str | None) -> bool:
    """Write the model's record unless an equivalent one is already there (idempotence)."""
    cfg = model.config
    blobs = [BlobRef(bf.sha256, bf.size, src) for bf, src in zip(model.shards, cfg.shard_sources)]
    mm = model.mmproj
    mmproj = BlobRef(mm.sha256, mm.size, cfg.mmproj) if mm and cfg.mmproj else None
    old = store.record(model.id)
    if (
        old is not None
        and old.source == cfg.source
        and old.revision == cfg.revision
        and list(old.blobs) == blobs
        and old.mmproj == mmproj
        and old.verified_at is not None
        and (signer is None or old.bundle_signer == signer)
    ):
        return False
    rec = ModelRecord(
        model=model.id,
        source=cfg.source,
        revision=cfg.revision,
        blobs=blobs,
        verified_at=store.clock(),
        bundle_signer=signer,
        extra={"mmproj": asdict(mmproj)} if mmproj else {},
    )
    if old is not None and signer is None and (old.source, old.revision, old.blobs) == (cfg.source, cfg.revision, blobs):
        rec = replace(rec, bundle_signer=old.bundle_signer)  # same model re-verified: its signer stands
    store.write_record(rec)
    return True
