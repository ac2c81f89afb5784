"""Merging a bundle's catalog entries into models.toml (tomlkit keeps the admin's comments).

An entry equal to the one already there (same settings once defaults apply) is left alone,
so a second import of the same bundle leaves the file byte-identical; a different entry of
the same id is refused unless `replace`. The merged catalog must still validate (aliases
included) before anything is written. `check_merge` is the dry run before any byte of the
bundle is installed; `merge_catalog` does it for real through store.catalog_edit's
`edit_catalog` (lock, fresh read, atomic write), shared with `appliance import`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit

from ..config import ModelConfig, parse_catalog
from ..errors import BundleError, ConfigError
from ..store.catalog_edit import edit_catalog, make_table, read_doc

Entries = list[tuple[str, dict[str, Any], ModelConfig]]


@dataclass(frozen=True)
class MergeResult:
    added: list[str]
    replaced: list[str]
    unchanged: list[str]


def _merge_into(doc: tomlkit.TOMLDocument, path: Path, entries: Entries, *, replace: bool, note: str) -> MergeResult:
    """Change `doc` in place; BundleError on a conflict or a catalog that is or would be invalid."""
    current = doc.unwrap()
    try:
        parse_catalog(current, str(path))
    except ConfigError as e:
        raise BundleError(f"fix the catalog before importing: {e.message}") from None

    added, replaced, unchanged = [], [], []
    for model_id, table, cfg in entries:
        if model_id in current:
            try:
                same = ModelConfig.model_validate(current[model_id]) == cfg
            except ValueError:
                same = False
            if same:
                unchanged.append(model_id)
                continue
            if not replace:
                raise BundleError(
                    f"model {model_id!r} already exists in {path} with different settings; "
                    "use --replace to overwrite it"
                )
            doc[model_id] = make_table(table)
            replaced.append(model_id)
        else:
            if len(doc.body) > 0:
                doc.add(tomlkit.nl())
            doc.add(tomlkit.comment(note))
            doc.add(model_id, make_table(table))
            added.append(model_id)
    if added or replaced:
        try:
            parse_catalog(tomlkit.parse(tomlkit.dumps(doc)).unwrap(), str(path))
        except ConfigError as e:
            raise BundleError(f"importing would make the catalog invalid: {e.message}") from None
    return MergeResult(added, replaced, unchanged)


def check_merge(path: Path, entries: Entries, *, replace: bool, note: str) -> MergeResult:
    """What merging would do, without a lock and without writing; BundleError on a conflict."""
    try:
        doc, _ = read_doc(path)
    except ConfigError as e:
        raise BundleError(f"cannot read {path}: {e.problem}") from None
    return _merge_into(doc, path, entries, replace=replace, note=note)


def merge_catalog(path: Path, entries: Entries, *, replace: bool, note: str) -> MergeResult:
    """Merge under the catalog lock, against the file as it is now, and write it atomically
    (keeping its owner, group and mode); nothing is written when nothing changes."""
    try:
        with edit_catalog(path) as edit:
            return _merge_into(edit.doc, path, entries, replace=replace, note=note)
    except ConfigError as e:  # reading it failed (the merged text was checked in _merge_into)
        raise BundleError(f"cannot read {path}: {e.problem}") from None
