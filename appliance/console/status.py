"""The console's status document: one JSON object per update, shaped for the page.

Which parts a caller sees depends on its key: the models its key may use (as /v1/models),
memory and traffic for everyone, and the key list, per-key usage and pulls for admins only
(the page hides admin controls from inference keys; the server enforces it regardless).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..auth import ADMIN, ApiKey, Keyring
from ..config import ApplianceConfig, Catalog, ModelConfig
from .activity import Activity
from .devices import DeviceReadings, device_rows
from .pulls import Pulls


class Changes:
    """"Something changed" (a pull progressed, a model was asked to load): wakes every
    status stream at once instead of waiting for its next tick."""

    def __init__(self) -> None:
        self.version = 0
        self._event = asyncio.Event()

    def notify(self) -> None:
        self.version += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, seen: int, timeout: float) -> None:
        """Return when a change after version `seen` happened (maybe already) or at timeout."""
        if self.version != seen:
            return
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            pass


@dataclass
class Console:
    """What the console's routes read; built by `add_console` and kept on the app."""

    config: ApplianceConfig
    catalog: Callable[[], Catalog]
    keyring: Keyring
    activity: Activity
    devices: DeviceReadings
    scheduler: Any = None  # None: no residency information (an app without a scheduler)
    store: Any = None
    pulls: Pulls | None = None
    changes: Changes = field(default_factory=Changes)
    streams: int = 0  # open status streams: requests in flight, but not traffic to show
    started: float = field(default_factory=time.time)


def is_admin(key: ApiKey | None) -> bool:
    """No key means the open loopback mode (no keys exist): everything is allowed there."""
    return key is None or key.has_scope(ADMIN)


def _visible(catalog: Catalog, key: ApiKey | None) -> dict[str, ModelConfig]:
    return {mid: cfg for mid, cfg in catalog.models.items() if key is None or key.may_use(mid, *cfg.aliases)}


def _unload_in(row: Any, cfg: ModelConfig) -> float | None:
    """Seconds until keep_alive unloads an idle model; None while busy, pinned or forever."""
    if row is None or row.state != "loaded" or row.pinned or row.idle_seconds is None:
        return None
    if math.isinf(cfg.keep_alive):
        return None
    return max(0.0, cfg.keep_alive - row.idle_seconds)


def model_rows(c: Console, key: ApiKey | None, draining: bool) -> list[dict[str, Any]]:
    rows = {s.id: s for s in c.scheduler.snapshot()} if c.scheduler is not None else {}
    recent = c.activity.summary()["models"]
    out = []
    for mid, cfg in _visible(c.catalog(), key).items():
        stored = c.store.state(mid, cfg).state if c.store is not None else None
        r = rows.get(mid)
        residency = r.state if r is not None else "unloaded"
        state = stored or "unknown"
        if residency != "unloaded":
            state = "draining" if residency == "unloading" or draining else residency
        out.append({
            "id": mid,
            "aliases": list(cfg.aliases),
            "state": state,  # what the page shows: residency when resident, else the store's
            "store": stored,  # missing / present / verified
            "residency": residency,  # unloaded / loading / loaded / unloading
            "embedding": cfg.embedding,
            "pinned": cfg.pinned,
            "context": cfg.context,
            "device": r.device if r else None,
            "memory": (r.memory_measured or r.memory_estimated) if r else None,
            "memory_measured": bool(r and r.memory_measured),
            "slots_busy": r.slots_busy if r else 0,
            "slots_total": r.slots_total if r else cfg.parallel,
            "queue_depth": r.queue_depth if r else 0,
            "unload_in_s": _unload_in(r, cfg),
            "recent": recent.get(mid),
        })
    return out


def _traffic(summary: dict[str, Any], admin: bool) -> dict[str, Any]:
    """The window's totals; which key failed is for admins only."""
    out = {k: v for k, v in summary.items() if k != "models"}
    if not admin:
        out["last_errors"] = [{k: v for k, v in e.items() if k != "key"} for e in out["last_errors"]]
    return out


def build_status(c: Console, key: ApiKey | None, *, ready: bool, draining: bool, in_flight: int) -> dict[str, Any]:
    admin = is_admin(key)
    snapshot = c.scheduler.snapshot() if c.scheduler is not None else []
    doc: dict[str, Any] = {
        "time": time.time(),
        "server": {"ready": ready, "draining": draining, "in_flight": in_flight,
                   "uptime_s": time.time() - c.started},
        "key": {"name": key.name if key else None, "admin": admin},
        "models": model_rows(c, key, draining),
        "devices": device_rows(c.devices, c.config.memory, snapshot),
        "traffic": _traffic(c.activity.summary(), admin),
    }
    if admin:
        usage = c.activity.keys()
        doc["keys"] = [
            {"name": k.name, "scopes": list(k.scopes), "models": list(k.models), "rpm": k.rpm,
             "created": k.created, "usage": usage.get(k.name)}
            for k in c.keyring.keys.values()
        ]
        doc["usage"] = usage
        doc["pulls"] = c.pulls.snapshot() if c.pulls is not None else None
    return doc
