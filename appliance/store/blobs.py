"""Content-addressed blobs: `<store>/blobs/sha256-<hex>`, read-only once installed.

Nothing unverified enters `blobs/`: bytes are written into `<store>/tmp/` (or kept for resume in
`<store>/partial/`), hashed while written, and renamed into place only after the checksum
matches. A writer holds flock on its temp file, so cleaning `tmp/` at open never deletes a
file a live process is still writing.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from ..errors import ChecksumMismatch
from .locks import try_lock_fd

CHUNK = 1 << 20


def blob_name(sha256: str) -> str:
    return f"sha256-{sha256}"


def hash_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
            if progress:
                progress(len(block))
    return h.hexdigest()


def make_read_only(path: Path) -> None:
    os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def adopt(src: Path, blobs: Path, sha256: str) -> Path:
    """Move an already-verified file into blobs/ (same filesystem: an atomic rename)."""
    dest = blobs / blob_name(sha256)
    make_read_only(src)
    os.replace(src, dest)
    return dest


def clean_tmp(tmp: Path) -> list[Path]:
    """Delete temp files nobody holds a lock on (left by killed processes)."""
    removed = []
    for p in tmp.iterdir() if tmp.is_dir() else []:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            if try_lock_fd(fd):
                p.unlink(missing_ok=True)
                removed.append(p)
        finally:
            os.close(fd)
    return removed


def _chunks(data: Iterable[bytes] | BinaryIO) -> Iterable[bytes]:
    if hasattr(data, "read"):
        reader = data.read  # type: ignore[union-attr]
        return iter(lambda: reader(CHUNK), b"")
    return data  # type: ignore[return-value]


def install_stream(
    data: Iterable[bytes] | BinaryIO,
    tmp: Path,
    blobs: Path,
    expected_sha256: str | None,
    *,
    what: str = "stream",
    progress: Callable[[int], None] | None = None,
) -> tuple[str, int]:
    """Hash while writing into tmp/, rename into blobs/ only if the checksum matches.

    Returns (sha256, size). On a mismatch the temp file is deleted and ChecksumMismatch raised.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp, prefix=f"{os.getpid()}-", suffix=".tmp")
    path = Path(name)
    fcntl.flock(fd, fcntl.LOCK_EX)  # marks the file live for clean_tmp in other processes
    h = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            for block in _chunks(data):
                f.write(block)
                h.update(block)
                size += len(block)
                if progress:
                    progress(len(block))
            f.flush()
            os.fsync(f.fileno())
        got = h.hexdigest()
        if expected_sha256 is not None and got != expected_sha256:
            raise ChecksumMismatch(what, expected_sha256, got)
        if (blobs / blob_name(got)).exists():
            path.unlink()
        else:
            adopt(path, blobs, got)
        return got, size
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
