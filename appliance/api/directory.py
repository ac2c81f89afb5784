"""Which models a request may name: catalog ids and aliases, filtered by the key's list.

A model outside the key's list gets the same 404 as a model that does not exist and is
absent from /v1/models, so a key cannot even tell what exists beyond its list. File paths
(`source`) are shown to admin keys (and in open mode) only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

from ..auth import ADMIN, ApiKey
from ..config import Catalog, ModelConfig
from ..errors import ModelNotFound


class _Records(Protocol):
    """The part of the store /v1/models needs (appliance.store.Store satisfies it)."""

    def record(self, model_id: str) -> Any: ...

    def blob_path(self, sha256: str) -> Path: ...


class ModelDirectory:
    def __init__(self, catalog: Callable[[], Catalog], store: _Records | None = None, started: float = 0.0) -> None:
        self._catalog = catalog
        self._store = store
        self._started = int(started)

    @property
    def catalog(self) -> Catalog:
        return self._catalog()

    def resolve(self, name: str, key: ApiKey | None) -> tuple[str, ModelConfig]:
        """The canonical id and config for `name` (an id or alias) or 404/403."""
        found = self.catalog.resolve(name)
        if found is None:
            raise ModelNotFound(f"the model {name!r} does not exist", param="model")
        mid, cfg = found
        if key is not None and not key.may_use(mid, name, *cfg.aliases):
            raise ModelNotFound(f"the model {name!r} does not exist", param="model")  # same as missing
        return mid, cfg

    def record(self, mid: str) -> Any:
        """The store's record of the model (blobs, sizes), or None when not pulled."""
        return self._store.record(mid) if self._store is not None else None

    def model_file(self, mid: str) -> Path | None:
        """The model's (first) GGUF in the store, or None when it is not there."""
        rec = self.record(mid)
        if rec is None or not rec.blobs or self._store is None:
            return None
        path = self._store.blob_path(rec.blobs[0].sha256)
        return path if path.is_file() else None

    def visible(self, key: ApiKey | None) -> list[tuple[str, ModelConfig]]:
        return [
            (mid, cfg)
            for mid, cfg in self.catalog.models.items()
            if key is None or key.may_use(mid, *cfg.aliases)
        ]

    def card(self, mid: str, cfg: ModelConfig, key: ApiKey | None = None) -> dict[str, Any]:
        """OpenAI's model object plus what an auditor needs: the checksum and the source."""
        rec = self.record(mid)
        shas: list[str | None] = list(rec.shas) if rec is not None and rec.shas else cfg.pinned_sha256
        sha: str | list[str | None] | None = shas[0] if len(shas) == 1 else shas
        created = self._started
        if rec is not None and getattr(rec, "verified_at", None):
            created = int(rec.verified_at)
        return {
            "id": mid,
            "object": "model",
            "created": created,
            "owned_by": "appliance",
            "sha256": sha,
            "source": cfg.source if key is None or key.has_scope(ADMIN) else None,
            "aliases": list(cfg.aliases),
            "context_length": cfg.context,
            "parallel": cfg.parallel,
            "embedding": cfg.embedding,
        }
