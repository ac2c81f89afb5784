"""INTERIM until appliance.scheduler lands: loads a Runner per model on first use, no
eviction, no memory accounting, same `lease()` shape as the scheduler. Delete on swap."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from ..config import Catalog, ModelConfig
from ..errors import ModelNotFound

Loader = Callable[[list[Path], ModelConfig, str], Any]
PathsFor = Callable[[str, ModelConfig], "list[Path] | None"]


class SingleModelBackend:
    def __init__(self, catalog: Callable[[], Catalog], paths_for: PathsFor, loader: Loader) -> None:
        self._catalog = catalog
        self._paths_for = paths_for
        self._loader = loader
        self.runners: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def _runner(self, model_id: str) -> Any:
        lock = self._locks.setdefault(model_id, asyncio.Lock())
        async with lock:
            if model_id not in self.runners:
                found = self._catalog().resolve(model_id)
                if found is None:
                    raise ModelNotFound(f"the model {model_id!r} does not exist", param="model")
                mid, cfg = found
                paths = self._paths_for(mid, cfg)
                if not paths:
                    raise ModelNotFound(f"the model {mid!r} is not in the store; run `appliance pull {mid}`",
                                        param="model")
                self.runners[model_id] = await asyncio.to_thread(self._loader, paths, cfg, mid)
            return self.runners[model_id]

    @contextlib.asynccontextmanager
    async def lease(self, model_id: str, key_name: str, *, slots: int = 1) -> AsyncIterator[Any]:
        yield await self._runner(model_id)

    async def close(self) -> None:
        for r in self.runners.values():
            await asyncio.to_thread(r.close)
        self.runners.clear()
