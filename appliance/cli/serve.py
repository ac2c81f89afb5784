"""`appliance serve`: run the daemon in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from ..api.state import RequestIdFilter
from ..config import Settings, load_settings


# How long a thread holding the GIL runs before one waiting for it may take it (CPython's
# default: 5 ms). The decode thread retakes the GIL after every llama.cpp call while the event
# loop, serving every stream, is busy; with 5 ms it could wait that long per call.
SWITCH_INTERVAL_S = 0.001


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="run the daemon in the foreground")
    p.add_argument("--host", help="listen address (overrides server.host)")
    p.add_argument("--port", type=int, help="listen port (overrides server.port; 0 = any free port)")
    p.set_defaults(func=run)


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


async def _serve(daemon: object) -> int:
    """[operations] service.runtime owns signals (SIGTERM drain, SIGHUP re-read), sd_notify,
    the watchdog, the admin socket, /metrics and the request log."""
    from ..daemon import Daemon
    from ..service.runtime import run_service

    assert isinstance(daemon, Daemon)

    def listening() -> None:
        # One line on stdout that scripts (and tests) can wait for.
        print(f"appliance: serving on {daemon.url}", flush=True)
        log_sources(daemon.settings)

    return await run_service(daemon, listening)


def log_sources(settings: Settings) -> None:
    """Which files this daemon runs from: the first question when it serves the wrong thing."""
    log = logging.getLogger("appliance.service")
    cat = settings.catalog
    log.info("config: %s; catalog: %s%s; keys: %s; store: %s", settings.config_path or "none found (defaults)",
             cat.path, "" if cat.exists else " (not found)", settings.keys_path, settings.config.store.path)
    if not cat.models:
        log.warning("the catalog %s has no models: requests will get model_not_found; add one with "
                    "`appliance pull owner/repo` or `appliance import FILE.gguf --name ID`", cat.path)


def run(args: argparse.Namespace) -> int:
    from ..daemon import Daemon

    settings = load_settings(args.config, args.models)
    from ..service.logs import configure_logging

    configure_logging(settings.config.server.log_format)  # [operations] text or json
    daemon = Daemon(settings, host=args.host, port=args.port)
    daemon.check()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return asyncio.run(_serve(daemon))
