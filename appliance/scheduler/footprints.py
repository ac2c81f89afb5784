"""Measured footprints, remembered across restarts (`<store>/footprints.json`).

An estimate is a model of llama.cpp; a measurement after a warm-up decode at full batch is
the truth for that file on that machine with those settings. The key is the model's sha256
plus every setting that changes memory, so a changed setting is estimated afresh.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomicfile import write_atomic
from ..config import ModelConfig


def footprint_key(sha256: str, cfg: ModelConfig, *, device: str, gpu_layers: int, split: bool) -> str:
    return (
        f"{sha256}|ctx={cfg.context}|par={cfg.parallel}|kv={cfg.kv_cache_type}"
        f"|emb={int(cfg.embedding)}|dev={device}|ngl={gpu_layers}|split={int(split)}"
    )


class Footprints:
    """A small JSON map key -> bytes; written atomically, unreadable files start empty."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._data: dict[str, int] = {}
        if path is not None and path.is_file():
            try:
                raw = json.loads(path.read_text())
                self._data = {str(k): int(v) for k, v in raw.items() if isinstance(v, int) and v > 0}
            except (OSError, ValueError, AttributeError):
                self._data = {}  # a damaged cache only costs us a re-measurement

    def get(self, key: str) -> int | None:
        return self._data.get(key)

    def put(self, key: str, nbytes: int) -> None:
        if nbytes <= 0:
            return
        self._data[key] = int(nbytes)
        if self.path is None:
            return
        write_atomic(self.path, json.dumps(self._data, indent=1, sort_keys=True), new_mode=0o644, keep_mask=None)
