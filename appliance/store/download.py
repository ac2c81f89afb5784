"""Pulling a catalog model into the store: local providers, file:// copies, and resumable
hub downloads that survive the process being killed.

huggingface_hub's own download restarts from zero after kill -9, so we keep our own partial
file under `<store>/partial/` and continue it with a `Range` request, re-hashing the prefix that
is already on disk. Whatever the transport, we hash what was written: the hub library checks
sizes only.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from ..config import ModelConfig
from ..errors import ChecksumMismatch, DownloadError, DownloadInterrupted, NotGGUF, OfflineError, StoreError
from ..progress import byte_progress
from .blobs import CHUNK
from .ggufmeta import check_gguf
from .core import Store
from .records import BlobRef, ModelRecord

SHA_RE = re.compile(r"^[0-9a-f]{64}$")
RETRIES = 5  # a dropped connection is resumed (Range) this many times within one pull
BACKOFF_S = 0.5  # first wait before a retry; doubles each time, up to BACKOFF_MAX_S
BACKOFF_MAX_S = 8.0
sleep: Callable[[float], None] = time.sleep  # tests replace it: backoff without real waits

Echo = Callable[[str], None]
# (file name, bytes done, bytes in all or None): progress for a caller without a terminal
# (the web console's pull), given as `progress=` instead of True/False.
ProgressFn = Callable[[str, int, "int | None"], None]


@dataclass
class PullResult:
    model: str
    shas: list[str] = field(default_factory=list)
    downloaded: int = 0  # bytes fetched over the network by this call
    up_to_date: bool = False
    unpinned: list[str] = field(default_factory=list)  # checksums taken from the hub, to pin
    via: list[str] = field(default_factory=list)  # per shard: store / provider name / file / hub
    mmproj_sha256: str | None = None  # the projector's verified checksum, when the entry has one


def hub_offline() -> bool:
    """Read at call time: huggingface_hub reads HF_HUB_OFFLINE only at import."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def split_hf(source: str) -> tuple[str, str]:
    """hf://owner/repo/path/in/repo.gguf -> ("owner/repo", "path/in/repo.gguf")."""
    parts = source[len("hf://") :].split("/")
    return "/".join(parts[:2]), "/".join(parts[2:])


class _Report:
    """A progress bar's stand-in that reports to a function instead of drawing."""

    def __init__(self, report: ProgressFn, total: int | None, desc: str, initial: int) -> None:
        self.report, self.total, self.desc, self.done = report, total, desc, initial
        report(desc, initial, total)

    def update(self, n: int = 1) -> None:
        self.done += n
        self.report(self.desc, self.done, self.total)

    def __enter__(self) -> "_Report":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _bar(total: int | None, desc: str, initial: int = 0, enabled: bool | ProgressFn = True) -> Any:
    """A bar on a terminal, periodic lines on a pipe (progress.py), or reports to a function."""
    if callable(enabled):
        return _Report(enabled, total, desc, initial)
    return byte_progress(total, desc, initial, enabled)


def pull_model(
    store: Store,
    model_id: str,
    cfg: ModelConfig,
    *,
    wait: bool = True,
    progress: bool | ProgressFn = True,
    echo: Echo = lambda s: None,
) -> PullResult:
    """Make every shard of `model_id` present and verified; write its record. `progress`:
    bars on stderr (True), nothing (False), or a function told each file's progress."""
    result = PullResult(model_id)
    waiting = lambda: echo(f"{model_id}: waiting for another pull of this model to finish")  # noqa: E731
    with store.lock(model_id, wait=wait, on_wait=waiting):
        st = store.state(model_id, cfg)
        if st.state == "verified" and st.record and st.record.revision == cfg.revision and _has_mmproj(store, cfg, st.record):
            result.up_to_date = True
            result.shas = st.record.shas
            return result
        refs: list[BlobRef] = []
        commit = None
        for src, pin in zip(cfg.shard_sources, cfg.pinned_sha256):
            sha, size, via, shard_commit = _fetch_shard(store, src, cfg.revision, pin, progress, result)
            commit = commit or shard_commit
            refs.append(BlobRef(sha, size, src))
            result.shas.append(sha)
            result.via.append(via)
            if pin is None:
                result.unpinned.append(sha)
        extra: dict[str, object] = {}
        if cfg.mmproj:  # the projector of a multimodal model: verified like a shard, kept beside
            sha, size, via, _ = _fetch_shard(store, cfg.mmproj, cfg.revision, cfg.mmproj_sha256, progress, result)
            extra["mmproj"] = asdict(BlobRef(sha, size, cfg.mmproj))
            result.via.append(via)
            result.mmproj_sha256 = sha
        store.new_record(model_id, cfg, refs, commit=commit, extra=extra)
    return result


def _has_mmproj(store: Store, cfg: ModelConfig, record: ModelRecord) -> bool:
    """The entry names no projector, or the record holds the one it names."""
    if not cfg.mmproj:
        return True
    got = record.mmproj
    return (got is not None and got.source == cfg.mmproj and store.has_blob(got.sha256)
            and cfg.mmproj_sha256 in (None, got.sha256))


def _fetch_shard(
    store: Store, src: str, revision: str, pin: str | None, progress: bool | ProgressFn, result: PullResult
) -> tuple[str, int, str, str | None]:
    name = src.rsplit("/", 1)[-1]
    if pin and store.has_blob(pin):
        return pin, store.blob_path(pin).stat().st_size, "store", None
    if pin:
        for provider in store.providers:
            chunks = provider.chunks(pin)
            if chunks is not None:
                with _bar(None, name, enabled=progress) as bar:
                    sha = store.install_stream(chunks, pin, what=f"{name} from {provider.name}", progress=bar.update)
                return sha, store.blob_path(sha).stat().st_size, provider.name, None
    if src.startswith("file://"):
        return (*_copy_file(store, Path(src[len("file://") :]), pin, progress), "file", None)
    if hub_offline():
        raise OfflineError(
            f"HF_HUB_OFFLINE is set and {src} is not in the store"
            + ("" if pin else " (no sha256 pinned, so no local provider can supply it)")
        )
    return _download_hf(store, src, revision, pin, progress, result)


def _copy_file(store: Store, path: Path, pin: str | None, progress: bool | ProgressFn) -> tuple[str, int]:
    check_gguf(path, what=str(path))
    try:
        size = path.stat().st_size
        f = open(path, "rb")
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror}") from None
    store.check_disk(size)
    with f, _bar(size, path.name, enabled=progress) as bar:
        sha = store.install_stream(f, pin, what=str(path), progress=bar.update)
    return sha, size


def _download_hf(
    store: Store, src: str, revision: str, pin: str | None, progress: bool | ProgressFn, result: PullResult
) -> tuple[str, int, str, str | None]:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import build_hf_headers, get_session

    repo, filename = split_hf(src)
    endpoint = hub_endpoint()
    url = hf_hub_url(repo, filename, revision=revision, endpoint=endpoint)
    try:
        meta = get_hf_file_metadata(url, endpoint=endpoint)
    except HfHubHTTPError as e:
        raise DownloadError(f"{src}@{revision}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # network errors from the HTTP client: refused, DNS, timeout
        raise DownloadError(f"{src}@{revision}: cannot reach {urlparse(url).netloc}: {e}") from None
    if meta.size is None:
        raise DownloadError(f"{src}@{revision}: the hub sent no file size")
    lfs_sha = meta.etag if meta.etag and SHA_RE.match(meta.etag) else None
    if pin and lfs_sha and lfs_sha != pin:  # the hub says so before a byte is downloaded
        raise ChecksumMismatch(f"{src}@{revision} (the hub's ETag; nothing downloaded)", pin, lfs_sha)
    expected = pin or lfs_sha
    if expected and store.has_blob(expected, meta.size):
        return expected, meta.size, "store", meta.commit_hash
    key = lfs_sha or hashlib.sha256(f"{src}@{meta.commit_hash or revision}".encode()).hexdigest()
    part = store.partial_path(key)
    location = meta.location or url
    same_host = urlparse(location).netloc == urlparse(url).netloc
    headers = build_hf_headers() if same_host else {}  # never send the token off the hub
    for attempt in range(RETRIES + 1):
        try:
            got, fetched = _resumable_get(store, get_session(), location, headers, part, meta.size, progress, filename)
            break
        except DownloadInterrupted as e:
            result.downloaded += e.fetched
            if attempt == RETRIES:
                raise
            sleep(min(BACKOFF_MAX_S, BACKOFF_S * 2**attempt))
    result.downloaded += fetched
    if expected and got != expected:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(src, expected, got)
    try:
        check_gguf(part, what=src)
    except NotGGUF:
        part.unlink(missing_ok=True)
        raise
    store.adopt_partial(part, got)
    return got, meta.size, "hub", meta.commit_hash


def _resumable_get(
    store: Store, session, url: str, headers: dict[str, str], part: Path, size: int, progress: bool | ProgressFn, name: str
) -> tuple[str, int]:
    """Append to `part` from where it ends (Range), hashing prefix and new bytes. -> (sha256, fetched)."""
    import fcntl

    store.partial.mkdir(parents=True, exist_ok=True)
    fetched = 0
    with open(part, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # two models sharing one blob share one partial
        have = f.seek(0, os.SEEK_END)
        if have > size:
            f.truncate(0)
            have = 0
        h = hashlib.sha256()
        f.seek(0)
        left = have
        while left:
            block = f.read(min(CHUNK, left))
            h.update(block)
            left -= len(block)
        store.check_disk(size - have)
        if have < size:
            req = dict(headers)
            if have:
                req["Range"] = f"bytes={have}-"
            try:
                with session.stream("GET", url, headers=req, follow_redirects=True, timeout=60) as r:
                    if have and r.status_code == 200:  # server ignored Range: start over
                        f.truncate(0)
                        have, h = 0, hashlib.sha256()
                    elif r.status_code not in (200, 206):
                        raise DownloadError(f"{name}: HTTP {r.status_code} from {urlparse(url).netloc}")
                    f.seek(have)
                    with _bar(size, name, initial=have, enabled=progress) as bar:
                        for block in r.iter_bytes():  # as it arrives, so a cut loses nothing
                            f.write(block)
                            f.flush()  # what is on disk is what a resume re-hashes
                            h.update(block)
                            have += len(block)
                            fetched += len(block)
                            bar.update(len(block))
            except DownloadError:
                raise
            except Exception as e:  # connection cut, timeout: keep the partial for resume
                raise DownloadInterrupted(
                    f"{name}: download interrupted at {have} of {size} bytes ({e}) after {RETRIES} retries; "
                    "run pull again to resume", fetched=fetched,
                ) from None
        if have != size:
            raise DownloadInterrupted(
                f"{name}: got {have} of {size} bytes after {RETRIES} retries; run pull again to resume", fetched=fetched
            )
        os.fsync(f.fileno())
    return h.hexdigest(), fetched
