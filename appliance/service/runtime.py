"""`run_service(daemon)`: the daemon's life as a service, from start to exit code.

Wires the operations pieces around a started `Daemon`: metrics and request logs on its
on_request hook, the watchdog heartbeat and STATUS lines, the admin socket, the
models.toml watcher, SIGHUP re-reads, and the SIGTERM drain. `appliance serve` calls it.

Order (what systemd sees): heartbeat first (pings while pinned models load), start with
EXTEND_TIMEOUT_USEC, READY=1 once listening and loaded; on SIGTERM: STOPPING=1, drain,
close the admin socket, stop (cancel stragglers, unload), return 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Callable

from aiohttp import web

from ..config import load_catalog
from ..errors import ApplianceError, ModelNotFound
from .adminsock import AdminServer, admin_socket_path
from .drain import FileWatcher, drain, install_signals
from .logs import log_request
from .metrics import Metrics, add_metrics_route
from .backend import ServiceBackend
from .notify import Heartbeat, Notifier, RunnerReading, watchdog_interval

if TYPE_CHECKING:
    from ..daemon import Daemon

log = logging.getLogger("appliance.service")

LOADED_STATES = ("loading", "loaded")


# --- reading the backend (the scheduler, through service/backend.py) ------------------------


def runner_readings(backend: ServiceBackend) -> list[RunnerReading]:
    """The watchdog's view of every runner."""
    return [RunnerReading(mid, r.in_call_since, r.last_progress) for mid, r in backend.runners().items()]


def loaded_models(backend: ServiceBackend) -> list[str]:
    return sorted(s.id for s in backend.snapshot() if s.state in LOADED_STATES)


def status_line(daemon: Daemon) -> str:
    """STATUS= text for `systemctl status`: what is loaded, what waits."""
    if daemon.state.draining:
        prefix = f"draining ({daemon.state.in_flight} in flight)"
    elif daemon.state.ready:
        prefix = "serving"
    else:
        prefix = "starting"
    queued = sum(s.queue_depth for s in daemon.backend.snapshot())
    loaded = loaded_models(daemon.backend)
    return f"{prefix}; loaded: {', '.join(loaded) or 'none'}; queued: {queued}"


def status_report(daemon: Daemon) -> dict[str, Any]:
    """The admin socket's `status` answer."""
    return {
        "ready": daemon.state.ready,
        "draining": daemon.state.draining,
        "in_flight": daemon.state.in_flight,
        "url": daemon.url,
        "loaded": loaded_models(daemon.backend),
        "models": {s.id: s.to_json() for s in daemon.backend.snapshot()},
    }


# --- re-reading files ------------------------------------------------------------------------


def reload_files(daemon: Daemon) -> dict[str, Any]:
    """SIGHUP / admin `reload`: re-read models.toml and the keys file now. A broken file is
    logged and the previous version kept (the daemon keeps serving)."""
    out: dict[str, Any] = {}
    cat = daemon.settings.catalog
    # A catalog absent at start may have been created since (`appliance import`): read it
    # once it exists. One that existed and vanished is an error (the previous one is kept).
    if cat.exists or cat.path.exists():
        try:
            new = load_catalog(cat.path)
        except ApplianceError as e:
            log.error("models.toml not reloaded: %s", e.message)
            out["models_error"] = e.message
        else:
            daemon.update_catalog(new)  # settings apply at each model's next load
            out["models"] = sorted(new.models)
            log.info("models.toml re-read: %d model(s)", len(new.models))
    try:
        daemon.reload()  # the keys file
        out["keys"] = len(daemon.keyring.keys)
    except ApplianceError as e:
        log.error("keys file not reloaded: %s", e.message)
        out["keys_error"] = e.message
    return out


# --- the service ---------------------------------------------------------------------------


def _has_route(app: web.Application, path: str) -> bool:
    return any(r.canonical == path for r in app.router.resources())


class Service:
    """The operations layer around one Daemon."""

    def __init__(self, daemon: Daemon, *, notifier: Notifier | None = None, env: dict[str, str] | None = None) -> None:
        self.daemon = daemon
        self.clock = daemon.clock
        self.notifier = notifier or Notifier(env)
        self.metrics = Metrics(daemon.backend.snapshot)
        daemon.backend.events = self.metrics  # the scheduler reports loads, evictions, waits
        self.stop_requested = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.heartbeat = Heartbeat(
            self.notifier, self.clock, lambda: runner_readings(daemon.backend),
            lambda: status_line(daemon), watchdog_every=watchdog_interval(env),
        )
        self.admin = AdminServer(
            admin_socket_path(daemon.settings.config.store.path, env),
            {"status": self._status, "reload": self._reload, "unload": self._unload},
        )

    async def _status(self, req: dict[str, Any]) -> dict[str, Any]:
        return status_report(self.daemon)

    async def _reload(self, req: dict[str, Any]) -> dict[str, Any]:
        return reload_files(self.daemon)

    async def _unload(self, req: dict[str, Any]) -> dict[str, Any]:
        model = str(req.get("model") or "")
        if model not in loaded_models(self.daemon.backend):
            raise ModelNotFound(f"model {model!r} is not loaded")
        await self.daemon.backend.unload(model)
        return {"unloaded": model}

    def prepare(self) -> None:
        """Before the app starts (its router freezes then): hooks and the /metrics route."""
        self.daemon.on_request(self.metrics.on_request)
        self.daemon.on_request(log_request)
        # The request line now comes from service.logs (text or JSON); keep one per request.
        logging.getLogger("appliance.access").propagate = False
        if not _has_route(self.daemon.app, "/metrics"):
            add_metrics_route(self.daemon.app, self.metrics)

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.create_task(coro))

    async def run(self, on_listening: Callable[[], None] | None = None) -> int:
        loop = asyncio.get_running_loop()
        self.prepare()
        remove_signals = install_signals(
            loop, self.stop_requested.set, lambda: self._spawn(self._hup()),
        )
        self._spawn(self.heartbeat.run())
        try:
            async with self.notifier.extending(self.clock):
                await self.daemon.start()
            await self.admin.start()
            self._watch()
            self.notifier.ready()
            self.heartbeat.beat(0.0)  # STATUS=serving at once
            if on_listening is not None:
                on_listening()
            await self.stop_requested.wait()
            await drain(
                self.daemon.state, self.notifier, self.clock,
                self.daemon.settings.config.server.drain_timeout,
                stop_admitting=self.daemon.backend.drain,
            )
            self.heartbeat.beat(0.0)
        finally:
            await self.admin.close()
            await self.daemon.stop()
            for t in self._tasks:
                t.cancel()
            for t in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            remove_signals()
        log.info("stopped")
        return 0

    async def _hup(self) -> None:
        self.notifier.reloading()
        reload_files(self.daemon)
        self.notifier.ready()

    def catalog_watcher(self) -> FileWatcher:
        """Watches models.toml's path even when it did not exist at start: a catalog created
        later (`appliance import`) is read without a restart."""
        def changed() -> None:
            log.info("models.toml changed on disk: re-reading")
            self.notifier.reloading()
            reload_files(self.daemon)
            self.notifier.ready()

        return FileWatcher(self.daemon.settings.catalog.path, changed, self.clock)

    def _watch(self) -> None:
        self._spawn(self.catalog_watcher().run())


async def run_service(daemon: Daemon, on_listening: Callable[[], None] | None = None) -> int:
    return await Service(daemon).run(on_listening)
