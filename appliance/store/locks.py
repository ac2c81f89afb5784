"""Per-model locks (fcntl.flock) so two pulls, or a pull and an rm, of one model never collide.

flock locks die with their process, so a killed pull never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Callable, Iterator

from ..errors import StoreBusy


@contextlib.contextmanager
def model_lock(
    locks: Path, model_id: str, *, wait: bool = True, on_wait: Callable[[], None] | None = None
) -> Iterator[None]:
    """Hold `<store>/locks/<model>.lock`. Busy: wait (calling on_wait once) or raise StoreBusy."""
    locks.mkdir(parents=True, exist_ok=True)
    path = locks / f"{model_id.replace('/', '%2F')}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise StoreBusy(f"another process is working on model {model_id!r} (lock {path})") from None
            if on_wait:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def try_lock_fd(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
