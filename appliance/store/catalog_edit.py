"""Adding an entry to models.toml with tomlkit, so the admin's comments and layout survive."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import tomlkit

from ..config import Catalog, parse_catalog
from ..errors import UsageError


def add_model_entry(catalog: Catalog, model_id: str, entry: dict[str, object]) -> Path:
    """Append `[model_id]` to the catalog file (created if absent); refuses an existing id or alias."""
    if catalog.resolve(model_id):
        raise UsageError(f"model {model_id!r} already exists in {catalog.path}; choose another --name")
    path = catalog.path
    doc = tomlkit.parse(path.read_text()) if path.exists() else tomlkit.document()
    table = tomlkit.table()
    for key, value in entry.items():
        table.add(key, value)
    doc.add(model_id, table)
    text = tomlkit.dumps(doc)
    parse_catalog(tomlkit.parse(text).unwrap(), str(path))  # never write a catalog we would reject
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".models-", suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if path.exists():
        os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)
    return path
