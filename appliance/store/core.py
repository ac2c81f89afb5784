"""The model store: content-addressed blobs plus one record per catalog model.

Layout under the store path:
    blobs/sha256-<hex>      verified GGUF files (read-only), shared between models
    manifests/<model>.json  records (records.py)
    partial/<key>.partial   interrupted downloads, kept so a later pull resumes
    tmp/                    files being written; cleaned at every open
    locks/<model>.lock      flock per model
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Literal

from ..config import Catalog, ModelConfig
from ..errors import ChecksumMismatch, InsufficientDisk, ModelInUse
from . import blobs as _blobs
from .journal import recover
from .locks import model_lock
from .providers import Provider, default_providers
from .records import BlobRef, ModelRecord, delete_record, read_record, write_record

State = Literal["missing", "present", "verified"]
DiskFree = Callable[[Path], int]
LoadedModels = Callable[[], "set[str] | None"]


def _disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


def _no_daemon() -> set[str] | None:
    return None


@dataclass(frozen=True)
class Removed:
    """What `remove` deleted, and the blobs it kept because other entries use them."""

    paths: list[Path]
    shared: dict[str, list[str]]  # sha256 -> the other model ids using it


@dataclass(frozen=True)
class ModelState:
    state: State
    paths: list[Path] | None  # blob paths in shard order when present
    size: int | None
    verified_at: float | None
    record: ModelRecord | None


class Store:
    """Blobs, records, locks and the checks around them; downloads live in download.py."""

    def __init__(
        self,
        path: Path | str,
        *,
        disk_free: DiskFree = _disk_free,
        providers: list[Provider] | None = None,
        loaded_models: LoadedModels = _no_daemon,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(path).expanduser()
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        self.partial = self.root / "partial"
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        self.disk_free = disk_free
        self.providers = default_providers() if providers is None else providers
        self.loaded_models = loaded_models
        self.clock = clock

    @classmethod
    def open(cls, path: Path | str, **kwargs: object) -> "Store":
        """Create the layout and clean tmp/ of files no live process holds."""
        store = cls(path, **kwargs)  # type: ignore[arg-type]
        for d in (store.blobs, store.manifests, store.partial, store.tmp, store.locks):
            d.mkdir(parents=True, exist_ok=True)
        recover(store.tmp)  # an install killed half-way: undone, or kept if it had committed
        _blobs.clean_tmp(store.tmp)
        return store

    # --- blobs -------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        return self.blobs / _blobs.blob_name(sha256)

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        try:
            st = self.blob_path(sha256).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def install_stream(
        self,
        data: Iterable[bytes] | BinaryIO,
        expected_sha256: str | None,
        *,
        what: str = "stream",
        progress: Callable[[int], None] | None = None,
    ) -> str:
        """Hashing writer: bytes into tmp/, renamed into blobs/ only when the sha256 matches."""
        sha, _ = _blobs.install_stream(data, self.tmp, self.blobs, expected_sha256, what=what, progress=progress)
        return sha

    def adopt_partial(self, partial: Path, sha256: str) -> Path:
        """A finished, verified download moves from partial/ into blobs/."""
        if self.has_blob(sha256):
            partial.unlink(missing_ok=True)
            return self.blob_path(sha256)
        return _blobs.adopt(partial, self.blobs, sha256)

    def check_disk(self, need: int) -> None:
        free = self.disk_free(self.root)
        if need > free:
            raise InsufficientDisk(str(self.root), need, free)

    def lock(self, model_id: str, *, wait: bool = True, on_wait: Callable[[], None] | None = None):  # noqa: ANN201
        return model_lock(self.locks, model_id, wait=wait, on_wait=on_wait)

    # --- records -----------------------------------------------------------------------

    def record(self, model_id: str) -> ModelRecord | None:
        return read_record(self.manifests, model_id)

    def write_record(self, rec: ModelRecord) -> None:
        write_record(self.manifests, rec)

    def records(self) -> dict[str, ModelRecord]:
        out = {}
        for p in sorted(self.manifests.glob("*.json")):
            mid = p.stem.replace("%2F", "/")
            rec = self.record(mid)
            if rec:
                out[mid] = rec
        return out

    def new_record(
        self, model_id: str, cfg: ModelConfig, blobs: list[BlobRef], *, commit: str | None = None,
        verified: bool = True, extra: dict[str, object] | None = None,
    ) -> ModelRecord:
        rec = ModelRecord(
            model=model_id, source=cfg.source, revision=cfg.revision, blobs=blobs, commit=commit,
            verified_at=self.clock() if verified else None, extra=extra or {},
        )
        self.write_record(rec)
        return rec

    # --- state -------------------------------------------------------------------------

    def _expected(self, model_id: str, cfg: ModelConfig) -> tuple[list[str], list[int | None], ModelRecord | None] | None:
        """The blobs this catalog entry should have: from its record if it still matches, else its pins."""
        rec = self.record(model_id)
        pins = cfg.pinned_sha256
        if rec and rec.source == cfg.source and len(rec.blobs) == len(pins) and all(
            p is None or p == s for p, s in zip(pins, rec.shas)
        ):
            return rec.shas, [b.size for b in rec.blobs], rec
        if all(pins):
            return [p for p in pins if p], [None] * len(pins), None
        return None

    def state(self, model_id: str, cfg: ModelConfig) -> ModelState:
        exp = self._expected(model_id, cfg)
        if exp is None:
            return ModelState("missing", None, None, None, self.record(model_id))
        shas, sizes, rec = exp
        paths, total, newest = [], 0, 0.0
        for sha, size in zip(shas, sizes):
            try:
                st = self.blob_path(sha).stat()
            except FileNotFoundError:
                return ModelState("missing", None, None, None, rec)
            if size is not None and st.st_size != size:
                return ModelState("missing", None, None, None, rec)
            paths.append(self.blob_path(sha))
            total += st.st_size
            newest = max(newest, st.st_mtime)
        # "verified" only while no blob changed since it was last hashed.
        if rec and rec.verified_at is not None and newest <= rec.verified_at:
            return ModelState("verified", paths, total, rec.verified_at, rec)
        return ModelState("present", paths, total, None, rec)

    def model_paths(self, model_id: str, cfg: ModelConfig) -> list[Path] | None:
        """Blob paths in shard order if every blob is present (what the daemon loads)."""
        return self.state(model_id, cfg).paths

    def mmproj_path(self, model_id: str, cfg: ModelConfig) -> Path | None:
        """The model's multimodal projector blob, when the catalog names one and it was pulled."""
        rec = self.record(model_id)
        mm = rec.mmproj if cfg.mmproj and rec else None
        return self.blob_path(mm.sha256) if mm and self.has_blob(mm.sha256) else None

    # --- verify and remove ---------------------------------------------------------------

    def verify(self, model_id: str, cfg: ModelConfig, progress: Callable[[int], None] | None = None) -> ModelState:
        """Re-hash every blob (the multimodal projector too). A mismatching blob is deleted
        (nothing unverified stays) and ChecksumMismatch raised; a match refreshes verified_at."""
        st = self.state(model_id, cfg)
        exp = self._expected(model_id, cfg)
        if st.paths is None or exp is None:
            return st
        shas, _, rec = exp
        mm = rec.mmproj if rec else None
        projector = [mm.sha256] if mm and self.has_blob(mm.sha256) else []
        with self.lock(model_id):
            for sha, path in zip(shas + projector, st.paths + [self.blob_path(p) for p in projector]):
                got = _blobs.hash_file(path, progress)
                if got != sha:
                    self._delete_blob(path)
                    if rec:
                        self.write_record(replace(rec, verified_at=None))
                    raise ChecksumMismatch(f"{model_id} ({path.name}, deleted; run `appliance pull {model_id}`)", sha, got)
            blobs = rec.blobs if rec else [
                BlobRef(s, p.stat().st_size, src) for s, p, src in zip(shas, st.paths, cfg.shard_sources)
            ]
            if rec:
                self.write_record(replace(rec, verified_at=self.clock()))
            else:
                self.new_record(model_id, cfg, blobs)
        return self.state(model_id, cfg)

    def _delete_blob(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
            path.unlink()

    def remove(self, model_id: str, catalog: Catalog) -> "Removed":
        """Delete the model's record and the blobs no other catalog entry uses.

        Refuses while the daemon reports the model loaded (no daemon reachable: allowed)."""
        loaded = self.loaded_models()
        if loaded is not None and model_id in loaded:
            raise ModelInUse(f"model {model_id!r} is loaded; unload it first (POST /admin/models/{model_id}/unload)")
        cfg = catalog.models[model_id]
        with self.lock(model_id, wait=False):
            mine = set(self._blob_shas(model_id, cfg))
            users: dict[str, list[str]] = {}
            for other in catalog.models:  # "uses" = pulled (has a record), not merely pinned
                rec = self.record(other) if other != model_id else None
                for sha in rec.all_shas if rec else set():
                    users.setdefault(sha, []).append(other)
            removed = []
            for sha in sorted(mine - set(users)):
                path = self.blob_path(sha)
                if path.exists():
                    self._delete_blob(path)
                    removed.append(path)
            delete_record(self.manifests, model_id)
        shared = {sha: users[sha] for sha in sorted(mine & set(users)) if self.has_blob(sha)}
        return Removed(removed, shared)

    def _blob_shas(self, model_id: str, cfg: ModelConfig) -> list[str]:
        rec = self.record(model_id)
        shas = sorted(rec.all_shas) if rec else []
        return shas + [p for p in cfg.pinned_sha256 if p]

    def partial_path(self, key: str) -> Path:
        return self.partial / f"{key}.partial"

    def iter_blobs(self) -> Iterator[Path]:
        return iter(sorted(self.blobs.glob("sha256-*")))
