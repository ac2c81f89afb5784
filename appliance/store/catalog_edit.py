"""Editing models.toml: one read-modify-write path for every writer (`appliance import`,
`pull REPO`, `rm`, `bundle import`), so two of them at once cannot lose each other's update.

`edit_catalog(path)` holds an exclusive flock on `<models.toml>.lock` (a separate file, since
the catalog itself is replaced by rename and a lock on it would go with the old inode), reads
the file inside the lock, lets the caller change the tomlkit document (the admin's comments
and layout survive), validates the result and writes it atomically, keeping the file's owner,
group and mode. Unchanged documents are not written at all.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import tomlkit
from tomlkit.exceptions import TOMLKitError

from ..atomicfile import locked, write_atomic
from ..config import Catalog, parse_catalog
from ..errors import ConfigError, UsageError

NEW_MODE = 0o644  # not secret; install.sh narrows /etc/appliance/models.toml to 0640, kept on rewrite


@dataclass
class CatalogEdit:
    """The catalog as read under the lock; change `doc` in place."""

    path: Path
    doc: tomlkit.TOMLDocument
    original: str

    def catalog(self) -> Catalog:
        """The document as it is now, validated (ConfigError names the bad entry)."""
        return Catalog(parse_catalog(self.doc.unwrap(), str(self.path)), self.path)


def read_doc(path: Path) -> tuple[tomlkit.TOMLDocument, str]:
    """models.toml as a tomlkit document plus its text ("" when absent); ConfigError if unreadable."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        text = ""
    except OSError as e:
        raise ConfigError(str(path), "", f"cannot read: {e.strerror}") from None
    try:
        return tomlkit.parse(text), text
    except TOMLKitError as e:
        raise ConfigError(str(path), "", f"invalid TOML: {e}") from None


def make_table(values: dict[str, Any]) -> Any:
    """`values` as a tomlkit table (written as a `[model-id]` section, keys in this order)."""
    table = tomlkit.table()
    for key, value in values.items():
        table.add(key, value)
    return table


@contextlib.contextmanager
def edit_catalog(path: Path) -> Iterator[CatalogEdit]:
    """Lock, read fresh, yield for changes, then validate and write atomically if changed.
    An exception inside the block writes nothing."""
    with locked(path):  # atomicfile.locked: flock on models.toml.lock, as for keys.toml
        doc, original = read_doc(path)
        edit = CatalogEdit(path, doc, original)
        yield edit
        text = tomlkit.dumps(edit.doc)
        if text == original:
            return
        parse_catalog(tomlkit.parse(text).unwrap(), str(path))  # never write a catalog we would reject
        write_atomic(path, text, new_mode=NEW_MODE)


def add_model_entry(catalog: Catalog, model_id: str, entry: dict[str, object]) -> Path:
    """Append `[model_id]` to the catalog file (created if absent); refuses an existing id or
    alias, checked against the file as it is inside the lock (another import may have added it)."""
    path = catalog.path
    with edit_catalog(path) as edit:
        if edit.catalog().resolve(model_id):
            raise UsageError(f"model {model_id!r} already exists in {path}; choose another --name")
        edit.doc.add(model_id, make_table(entry))
    return path


def remove_model_entry(catalog: Catalog, model_id: str) -> bool:
    """Delete `[model_id]` from the catalog file; False when the file has no such table."""
    with edit_catalog(catalog.path) as edit:
        if model_id not in edit.doc:
            return False
        del edit.doc[model_id]
    return True
