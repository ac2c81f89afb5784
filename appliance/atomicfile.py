"""Replacing a small config file atomically without changing who may read it.

Readers (the daemon re-reads keys.toml and models.toml while it runs) must never see half a
file, so writes go to a temp file in the same directory and are renamed over the old one.
A rename would also swap in the temp file's owner, group and mode: install.sh makes the files
in /etc/appliance 0640 root:appliance, and a root `appliance keys create` or `appliance import`
must not leave them 0600 root:root, unreadable by the service. So the temp file gets the old
file's owner (when we are root), group and mode first.

Writers that read, change and rewrite a file (`keys create`, `import`) must also not lose
each other's update, so they hold `locked(path)` around the whole read-modify-write.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

log = logging.getLogger(__name__)


def _copy_access(fd: int, path: Path, new_mode: int, keep_mask: int) -> None:
    try:
        old = os.stat(path)
    except FileNotFoundError:
        os.fchmod(fd, new_mode)
        return
    mode = stat.S_IMODE(old.st_mode) & keep_mask
    try:
        os.fchown(fd, old.st_uid if os.geteuid() == 0 else -1, old.st_gid)
    except PermissionError:
        # Not in that group: keep the owner's bits only rather than share with our own group.
        log.warning("cannot keep group %d of %s; writing it owner-only", old.st_gid, path)
        mode &= 0o700
    os.fchmod(fd, mode)


@contextlib.contextmanager
def atomic_writer(path: Path, *, new_mode: int, keep_mask: int | None = 0o777) -> Iterator[BinaryIO]:
    """A binary file that replaces `path` when the block ends (temp file beside it, fsync,
    rename) and vanishes if the block raises. A new file gets `new_mode`; an existing one
    keeps its owner (as root), group and mode masked by `keep_mask` (None: always `new_mode`,
    for files every user may read whoever wrote them last)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if keep_mask is None:
                os.fchmod(f.fileno(), new_mode)
            else:
                _copy_access(f.fileno(), path, new_mode, keep_mask)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_atomic(path: Path, text: str, *, new_mode: int, keep_mask: int | None = 0o777) -> None:
    """Replace `path` with `text` (UTF-8) the way `atomic_writer` does."""
    with atomic_writer(path, new_mode=new_mode, keep_mask=keep_mask) as f:
        f.write(text.encode("utf-8"))


def lock_path(path: Path) -> Path:
    """The lock file beside `path`: a separate file, because `path` itself is replaced by
    rename and a lock on it would stay with the old inode."""
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive flock on `<path>.lock` while the block runs (blocks until other writers
    finish). Read `path` inside the block, so a change made meanwhile is seen. The lock file
    is empty and 0644: opened read-only, anyone who may edit `path` can take the lock even
    when another user created it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(path), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock
