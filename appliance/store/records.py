"""What the store knows about each catalog model: one JSON record per model id.

A record lists the model's blobs in shard order with sizes and where they came from, and when
they were last hashed and found matching. The daemon, `ls`, `verify` and the bundle importer all
read these; the blobs themselves are content-addressed and may be shared between models.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomicfile import write_atomic

FORMAT = 1


@dataclass(frozen=True)
class BlobRef:
    sha256: str
    size: int
    source: str


@dataclass(frozen=True)
class ModelRecord:
    model: str
    source: str
    revision: str
    blobs: list[BlobRef]
    commit: str | None = None
    verified_at: float | None = None  # epoch seconds of the last successful hash of every blob
    bundle_signer: str | None = None  # reserved for offline bundles (key fingerprint)
    format: int = FORMAT
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def shas(self) -> list[str]:
        return [b.sha256 for b in self.blobs]

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blobs)

    @property
    def mmproj(self) -> BlobRef | None:
        """The multimodal projector pulled beside the model (kept in `extra`: older readers skip it)."""
        mm = self.extra.get("mmproj")
        try:
            return BlobRef(**mm) if isinstance(mm, dict) else None
        except TypeError:
            return None

    @property
    def all_shas(self) -> set[str]:
        """Every blob the record holds: shards and projector."""
        return set(self.shas) | ({self.mmproj.sha256} if self.mmproj else set())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "ModelRecord":
        raw = json.loads(text)
        raw["blobs"] = [BlobRef(**b) for b in raw["blobs"]]
        return cls(**raw)


def record_path(manifests: Path, model_id: str) -> Path:
    # Model ids are TOML table names; keep them from escaping the directory.
    safe = model_id.replace("/", "%2F")
    return manifests / f"{safe}.json"


def read_record(manifests: Path, model_id: str) -> ModelRecord | None:
    try:
        return ModelRecord.from_json(record_path(manifests, model_id).read_text())
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError):
        return None  # an unreadable record is treated as absent; the next pull rewrites it


def write_record(manifests: Path, rec: ModelRecord) -> None:
    """Atomically (temp file + rename) so a reader never sees half a record."""
    # 0644: a record written by root (bundle import) must stay readable by the service user,
    # like the blobs it describes.
    write_atomic(record_path(manifests, rec.model), rec.to_json(), new_mode=0o644, keep_mask=None)


def delete_record(manifests: Path, model_id: str) -> None:
    record_path(manifests, model_id).unlink(missing_ok=True)
