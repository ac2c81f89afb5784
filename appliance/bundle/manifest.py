"""The bundle manifest: what a bundle claims to hold, parsed strictly.

The manifest is the one thing a signature covers, so everything an import trusts (catalog
entries, file names, sizes, checksums) must come from it, and every name in it must be one
we would have written ourselves: `models/<id>/<shard file name>` in shard order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import SHA256_RE, ModelConfig, parse_catalog
from ..errors import BundleError, ConfigError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_SIGNATURE_BYTES = 1024

_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


def check_member_name(name: str) -> None:
    """Refuse names that could leave the bundle's own tree or mean different things on disk."""
    if not name:
        raise BundleError("bundle member with an empty name")
    if name.startswith("/"):
        raise BundleError(f"bundle member {name!r} has an absolute path")
    if _UNSAFE_CHARS.search(name):
        raise BundleError(f"bundle member {name!r} has a backslash or control character in its name")
    parts = name.split("/")
    if ".." in parts:
        raise BundleError(f"bundle member {name!r} has a '..' component")
    if any(p in ("", ".") for p in parts):
        raise BundleError(f"bundle member {name!r} is not a normalised path")


def file_name(model_id: str, shard_source: str) -> str:
    """Where a model's shard lives inside a bundle."""
    return f"models/{model_id}/{PurePosixPath(shard_source).name}"


@dataclass(frozen=True)
class BundleFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class BundleModel:
    id: str
    catalog: dict[str, Any]  # the models.toml table, key for key
    config: ModelConfig
    files: tuple[BundleFile, ...]  # the source's shards in order, then the projector (mmproj) if bundled

    @property
    def shards(self) -> tuple[BundleFile, ...]:
        return self.files[: len(self.config.shard_sources)]

    @property
    def mmproj(self) -> BundleFile | None:
        extra = self.files[len(self.config.shard_sources):]
        return extra[0] if extra else None


@dataclass(frozen=True)
class Manifest:
    format_version: int
    created: str
    appliance_version: str
    models: tuple[BundleModel, ...]

    def files(self) -> Iterator[tuple[BundleModel, BundleFile]]:
        """Every file in bundle order: models in manifest order, each model's shards in order."""
        for m in self.models:
            for f in m.files:
                yield m, f

    @property
    def total_bytes(self) -> int:
        return sum(f.size for _, f in self.files())


# --- the JSON schema (pydantic), then the rules that tie its parts together ---------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _FileDoc(_Strict):
    name: str
    size: int = Field(ge=0)
    sha256: str


class _ModelDoc(_Strict):
    id: str = Field(min_length=1, max_length=256)
    catalog: dict[str, Any]
    files: list[_FileDoc] = Field(min_length=1)


class _ManifestDoc(_Strict):
    format_version: int
    created: str
    appliance_version: str
    models: list[_ModelDoc] = Field(min_length=1)


def build_manifest(
    entries: list[tuple[str, dict[str, Any], list[tuple[int, str]]]],
    appliance_version: str,
    created: datetime | None = None,
) -> bytes:
    """Manifest bytes for (model id, catalog table, [(size, sha256) per shard, then the
    projector's when the entry has an `mmproj` and it is bundled]) entries.

    The result is parsed back before it is returned, so an export can never write a
    manifest that its own import would refuse.
    """
    when = (created or datetime.now(timezone.utc)).astimezone(timezone.utc)
    models: list[dict[str, Any]] = []
    doc: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "created": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "appliance_version": appliance_version,
        "models": models,
    }
    for model_id, table, shards in entries:
        cfg = _model_config(model_id, table)
        sources = cfg.shard_sources + ([cfg.mmproj] if cfg.mmproj and len(shards) == len(cfg.shard_sources) + 1 else [])
        if len(shards) != len(sources):
            raise BundleError(f"model {model_id!r} has {len(shards)} file(s) in the store, its source names {len(sources)}")
        models.append(
            {
                "id": model_id,
                "catalog": table,
                "files": [
                    {"name": file_name(model_id, src), "size": size, "sha256": sha}
                    for src, (size, sha) in zip(sources, shards)
                ],
            }
        )
    data = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()
    parse_manifest(data)
    return data


def parse_manifest(data: bytes) -> Manifest:
    """Validate manifest bytes completely; raise BundleError naming the first problem."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{MANIFEST_NAME} is {len(data)} bytes, over the {MAX_MANIFEST_BYTES}-byte limit")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{MANIFEST_NAME} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{MANIFEST_NAME} must hold a JSON object")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"unsupported bundle format_version {version!r} (this appliance reads {FORMAT_VERSION})"
        )
    try:
        doc = _ManifestDoc.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise BundleError(f"{MANIFEST_NAME}: {where}: {msg}") from None

    for m in doc.models:
        nulls = [k for k, v in m.catalog.items() if v is None]
        if nulls:
            raise BundleError(f"{MANIFEST_NAME}: model {m.id!r}: catalog key {nulls[0]!r} is null (TOML has no null)")
    ids = [m.id for m in doc.models]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup is not None:
        raise BundleError(f"{MANIFEST_NAME}: model {dup!r} is listed twice")
    try:
        configs = parse_catalog({m.id: m.catalog for m in doc.models}, MANIFEST_NAME)
    except ConfigError as e:
        raise BundleError(f"not a valid catalog entry: {e.message}") from None

    models = []
    for m in doc.models:
        cfg = configs[m.id]
        expected = [file_name(m.id, s) for s in cfg.shard_sources]
        names = [f.name for f in m.files]
        if cfg.mmproj and len(names) == len(expected) + 1:  # the projector, bundled beside
            expected.append(file_name(m.id, cfg.mmproj))
        for name in expected:
            check_member_name(name)
        if names != expected:
            raise BundleError(
                f"{MANIFEST_NAME}: model {m.id!r} must list files {expected} (its source's shards, in order), got {names}"
            )
        for f, pinned in zip(m.files, [*cfg.pinned_sha256, cfg.mmproj_sha256]):
            if not SHA256_RE.match(f.sha256):
                raise BundleError(f"{MANIFEST_NAME}: {f.name}: sha256 is not 64 lowercase hex digits")
            if pinned is not None and pinned != f.sha256:
                raise BundleError(
                    f"{MANIFEST_NAME}: {f.name}: sha256 {f.sha256} differs from the catalog entry's pinned {pinned}"
                )
        files = tuple(BundleFile(f.name, f.size, f.sha256) for f in m.files)
        models.append(BundleModel(m.id, dict(m.catalog), cfg, files))
    return Manifest(doc.format_version, doc.created, doc.appliance_version, tuple(models))


def _model_config(model_id: str, table: dict[str, Any]) -> ModelConfig:
    try:
        return parse_catalog({model_id: table}, "models.toml")[model_id]
    except ConfigError as e:
        raise BundleError(f"not a valid catalog entry: {e.message}") from None
