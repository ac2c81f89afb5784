"""An undo journal for a multi-step store change (a bundle's install phase), so that a
process killed between the steps leaves the store as before or as after, never between.

The install renames blobs into blobs/, writes records, then rewrites models.toml (an atomic
rename: the commit point). Before its first step it writes a journal into `<store>/tmp/`,
flock-held while the process lives, naming the blobs it adds and each record's previous
contents. On success the journal is deleted. If the process dies, the next `Store.open`
finds the journal unlocked: when the catalog already holds every entry (the commit
happened), it only deletes the journal; otherwise it undoes the blobs and records. An
exception inside the install undoes them at once, in process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .locks import try_lock_fd
from .records import record_path

PREFIX = "journal-"


@dataclass
class Journal:
    path: Path
    fd: int
    data: dict[str, Any]

    @classmethod
    def begin(cls, tmp: Path, data: dict[str, Any]) -> "Journal":
        """Write and fsync the journal (flock-held) before the first step it covers."""
        tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmp, prefix=PREFIX, suffix=".json")
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps(data).encode())
        os.fsync(fd)
        return cls(Path(name), fd, data)

    def end(self) -> None:
        """The change committed (or was undone): the journal goes."""
        self.path.unlink(missing_ok=True)
        os.close(self.fd)


def install_journal(catalog: Path, entries: dict[str, str], new_blobs: list[Path], manifests: Path,
                    models: list[str]) -> dict[str, Any]:
    """What an install must be able to undo: the blobs it adds, each record's old contents."""
    records: dict[str, str | None] = {}
    for mid in models:
        p = record_path(manifests, mid)
        try:
            records[str(p)] = p.read_text()
        except FileNotFoundError:
            records[str(p)] = None
    return {"catalog": str(catalog), "entries": entries, "blobs": [str(b) for b in new_blobs], "records": records}


def undo(data: dict[str, Any]) -> None:
    """Put blobs and records back as they were before the journal's change."""
    for b in data["blobs"]:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(b, 0o600)
            os.unlink(b)
    for path, old in data["records"].items():
        if old is None:
            Path(path).unlink(missing_ok=True)
        else:
            tmp = Path(path).with_suffix(".undo")
            tmp.write_text(old)
            os.replace(tmp, path)


def catalog_sources(path: Path) -> dict[str, str]:
    """Model id -> source in a models.toml, read plainly (no validation: only the commit
    check needs it)."""
    import tomllib

    with open(path, "rb") as f:
        doc = tomllib.load(f)
    return {k: str(v.get("source")) for k, v in doc.items() if isinstance(v, dict)}


def committed(data: dict[str, Any], catalog_sources: Callable[[Path], dict[str, str]]) -> bool:
    """Did the change reach its commit point (the catalog holds every entry, same source)?"""
    try:
        have = catalog_sources(Path(data["catalog"]))
    except Exception:
        return False
    return all(have.get(mid) == src for mid, src in data["entries"].items())


def recover(tmp: Path, sources: Callable[[Path], dict[str, str]] = catalog_sources) -> list[Path]:
    """Finish what dead processes left: journals nobody holds are rolled back or dropped."""
    done = []
    for p in sorted(tmp.glob(PREFIX + "*.json")) if tmp.is_dir() else []:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            if not try_lock_fd(fd):
                continue  # its process is alive and working
            try:
                data = json.loads(p.read_text())
            except ValueError:  # cut while being written: nothing was changed yet
                data = None
            if data is not None and not committed(data, sources):
                undo(data)
            p.unlink(missing_ok=True)
            done.append(p)
        finally:
            os.close(fd)
    return done
