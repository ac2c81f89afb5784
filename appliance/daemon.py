"""The composition root: settings -> store, keyring, backend (scheduler), app -> listener.

`Daemon.start()` listens (AppRunner + TCPSite with handler_cancellation=True, so a client
that hangs up cancels its handler and the engine frees the slot); `stop()` closes it. The
listener stays open while `state.draining` is set, so late clients get 503 `draining`
instead of connection refused (aiohttp's run_app would close the listener first).
Hooks for the operations layer: `state.ready`, `state.draining`, `state.on_request`.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import os
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from aiohttp import web

from .api.admin import mount_store
from .api.app import create_app
from .api.listener import HardenedSite, base_url
from .api.state import AppState, RequestRecord
from .auth import Keyring, RateLimiter
from .clock import Clock, SystemClock
from .config import Catalog, ModelConfig, Settings
from .engine.protocol import EngineRunner
from .errors import AddressInUse, ConfigError, ListenError, UsageError
from .service.backend import ServiceBackend

if TYPE_CHECKING:
    from .scheduler import Scheduler

log = logging.getLogger(__name__)

NO_KEYS_HINT = "create one with `appliance keys create admin --scope admin`"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    server = settings.config.server
    if server.tls_cert is None or server.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(server.tls_cert), str(server.tls_key))
    except (OSError, ssl.SSLError) as e:
        where = str(settings.config_path or "appliance.toml")
        raise ConfigError(where, "server.tls_cert", f"cannot load certificate/key: {e}") from None
    return ctx


def listen_error(host: str, port: int, e: OSError) -> ListenError:
    """One line for a bind failure instead of asyncio's traceback; in use is exit 1, the rest 2."""
    if e.errno == errno.EADDRINUSE:
        return AddressInUse(host, port, "address already in use")
    # asyncio folds the address into strerror; the errno's own text is the part users need.
    if isinstance(e, socket.gaierror) or not e.errno or e.errno < 0:
        reason = e.strerror or str(e)
    else:
        reason = os.strerror(e.errno).lower()
    if e.errno == errno.EACCES:
        reason += " (ports below 1024 need privileges)"
    return ListenError(host, port, reason)


def build_scheduler(settings: Settings, store: Any, clock: Clock) -> Scheduler:
    """The production scheduler: the engine's Runner as loader, the store for paths."""
    from .hardware import detect
    from .scheduler import Placement, Scheduler
    from .scheduler.core import Loader
    from .scheduler.loader import engine_loader

    verify = settings.config.store.verify_on_load
    cluster = tuple(settings.config.cluster.rpc)

    def store_loader(model_id: str, cfg: ModelConfig, paths: list[Path], placement: Placement) -> EngineRunner:
        """The store's projector beside the shards; with verify_on_load, re-hash first: a blob
        that no longer matches is deleted, never loaded."""
        if verify:
            store.verify(model_id, cfg)
        return engine_loader(model_id, cfg, paths, placement, mmproj=store.mmproj_path(model_id, cfg), cluster=cluster)

    loader: Loader = store_loader

    return Scheduler(settings.config, settings.catalog, store_paths=store.model_paths, loader=loader,
                     store_mmproj=store.mmproj_path,
                     hardware=detect(), clock=clock, config_path=settings.config_path)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        host: str | None = None,
        port: int | None = None,
        backend: ServiceBackend | None = None,
        store: Any = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        server = settings.config.server
        self.host = host or server.host
        self.port = server.port if port is None else port
        self.clock = clock or SystemClock()
        self.state = AppState()
        self.keyring = Keyring(settings.keys_path)
        if store is None:
            from .store import Store

            store = Store.open(settings.config.store.path)
        self.store = store
        # [operations] the catalog is read through self.settings so models.toml re-reads apply
        # (update_catalog forwards them to the scheduler).
        self.backend: ServiceBackend = backend if backend is not None else build_scheduler(settings, store, self.clock)
        self.limiter = RateLimiter(self.clock)
        self.app = create_app(
            settings,
            backend=self.backend,
            keyring=self.keyring,
            state=self.state,
            store=store,
            limiter=self.limiter,
            open_without_keys=is_loopback(self.host),
            catalog=lambda: self.settings.catalog,  # [operations] live catalog
        )
        # /admin/models/{id}/pull and each model's bundle signer
        mount_store(self.app, store, lambda: self.settings.catalog)
        self._runner: web.AppRunner | None = None
        self.ssl = ssl_context(settings)

    def check(self) -> None:
        """Refuse unsafe or broken setups before listening (both exit 2 in the CLI)."""
        self.keyring.check()
        if not is_loopback(self.host) and self.keyring.empty:
            raise UsageError(f"refusing to listen on {self.host} without API keys: {NO_KEYS_HINT}")

    def on_request(self, hook: Callable[[RequestRecord], None]) -> None:
        """Register a per-request hook (metrics, audit)."""
        self.state.on_request.append(hook)

    @property
    def url(self) -> str:
        return base_url(self.host, self.port, bool(self.ssl))

    async def start(self) -> None:
        self.check()
        # [operations] shutdown_timeout: stop() comes after service.drain has already waited
        # server.drain_timeout for in-flight requests; what is left is cancelled promptly.
        # keepalive_timeout: aiohttp's timer runs from connection open, so it bounds both slow
        # headers and idle keep-alive sockets (docs/security.md).
        server = self.settings.config.server
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None,
                                     shutdown_timeout=2.0, keepalive_timeout=server.idle_timeout)
        await self._runner.setup()
        cap = None if server.max_connections == "auto" else server.max_connections
        site = HardenedSite(self._runner, self.host, self.port, ssl_context=self.ssl, max_connections=cap)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            self._runner = None
            raise listen_error(self.host, self.port, e) from None
        # pinned models load while /ready says "starting" and every non-probe route answers
        # 503 not_ready (api/middleware.py), until ready below
        await self.backend.start()
        if self.port == 0:  # tests: learn the port the kernel picked
            self.port = self._runner.addresses[0][1]
        log.info("listening on %s (%d key(s))", self.url, len(self.keyring.keys))
        self.state.ready = True

    async def stop(self) -> None:
        """Stop serving: refuse new requests, close the listener and connections, unload."""
        self.state.draining = True
        self.state.ready = False
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.backend.stop()

    def update_catalog(self, catalog: Catalog) -> None:
        """[operations] models.toml was re-read: new ids are served at once, changed
        settings apply at the model's next load (the scheduler's update_catalog)."""
        self.settings = dataclasses.replace(self.settings, catalog=catalog)
        self.backend.update_catalog(catalog)

    def reload(self) -> None:
        """SIGHUP: re-read the keys file now."""
        self.keyring.refresh(force=True)
