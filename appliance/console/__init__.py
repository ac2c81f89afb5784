"""The web console at `/`: status, admin actions and a chat playground for the LAN.

Static files (appliance/console/static: HTML, one script, one stylesheet) ship inside the
package: no CDN, no build step. The page asks for an API key, keeps it in sessionStorage
and sends it as a Bearer header like any other client; it uses /v1 for chat, /admin for
admin actions and /console/api for status. See docs/console.md.
"""

from __future__ import annotations

from typing import Any, Callable

from aiohttp import web

from ..api.state import AppState
from ..auth import Keyring
from ..clock import Clock
from ..config import Catalog, Settings
from ..hardware import GpuStats, Hardware
from .activity import Activity
from .devices import DeviceReadings
from .pulls import Pulls
from ..api.middleware import is_page_path
from .routes import CONSOLE_KEY, add_console_routes
from .status import Console

__all__ = ["CONSOLE_KEY", "Console", "add_console", "is_page_path"]


def add_console(
    app: web.Application,
    settings: Settings,
    *,
    catalog: Callable[[], Catalog],
    keyring: Keyring,
    state: AppState,
    scheduler: Any = None,
    store: Any = None,
    hardware: Hardware | None = None,
    gpu_stats: Callable[[], list[GpuStats]] | None = None,
    clock: Clock | None = None,
) -> Console:
    """Mount the console on `app` and hook its traffic counter into `state.on_request`.
    `hardware` defaults to the scheduler's kind of detection (GPUs, else RAM)."""
    if hardware is None:
        from ..hardware import detect

        hardware = detect()
    if gpu_stats is None:
        from ..hardware import gpu_stats as nvml_stats

        gpu_stats = nvml_stats
    activity = Activity(clock)
    console = Console(
        config=settings.config, catalog=catalog, keyring=keyring, activity=activity,
        devices=DeviceReadings(hardware, gpu_stats, clock), scheduler=scheduler, store=store,
    )
    if store is not None:
        from ..store import pull_model

        def pull(model_id: str, progress: Any) -> Any:
            return pull_model(store, model_id, catalog().models[model_id], progress=progress)

        console.pulls = Pulls(pull, console.changes.notify)
    state.on_request.append(activity.on_request)
    add_console_routes(app, console)
    return console
