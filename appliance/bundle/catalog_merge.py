"""Merging a bundle's catalog entries into models.toml (tomlkit keeps the admin's comments).

An entry equal to the one already there (same settings once defaults apply) is left alone,
so a second import of the same bundle leaves the file byte-identical; a different entry of
the same id is refused unless `replace`. The merged catalog must still validate (aliases
included) before anything is written, and the write is atomic (temp file + rename).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from ..config import ModelConfig, parse_catalog
from ..errors import BundleError, ConfigError


@dataclass(frozen=True)
class MergePlan:
    path: Path
    text: str | None  # the new file contents; None when nothing changes
    added: list[str]
    replaced: list[str]
    unchanged: list[str]


def plan_merge(
    path: Path, entries: list[tuple[str, dict[str, Any], ModelConfig]], *, replace: bool, note: str
) -> MergePlan:
    """Work out the merged models.toml without writing it; raise BundleError on a conflict."""
    try:
        original = path.read_text() if path.exists() else ""
        doc = tomlkit.parse(original)
    except (OSError, TOMLKitError) as e:
        raise BundleError(f"cannot read {path}: {e}") from None
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
            doc[model_id] = _table(table)
            replaced.append(model_id)
        else:
            if len(doc.body) > 0:
                doc.add(tomlkit.nl())
            doc.add(tomlkit.comment(note))
            doc.add(model_id, _table(table))
            added.append(model_id)
    if not added and not replaced:
        return MergePlan(path, None, added, replaced, unchanged)
    text = tomlkit.dumps(doc)
    try:
        parse_catalog(tomlkit.parse(text).unwrap(), str(path))
    except ConfigError as e:
        raise BundleError(f"importing would make the catalog invalid: {e.message}") from None
    return MergePlan(path, text, added, replaced, unchanged)


def _table(values: dict[str, Any]) -> Any:
    table = tomlkit.table()
    for key, value in values.items():
        table.add(key, value)
    return table


def apply_merge(plan: MergePlan) -> None:
    """Write the planned catalog atomically, keeping the old file's permissions."""
    if plan.text is None:
        return
    path = plan.path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".models-", suffix=".toml")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(plan.text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
