"""Liveness and readiness for systemd, load balancers and humans; never behind a key."""

from __future__ import annotations

from aiohttp import web

from ..errors import Draining, NotReady
from .state import STATE_KEY


async def health(request: web.Request) -> web.Response:
    """Alive: the event loop answers."""
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """200 while serving; 503 while starting (pinned models loading) or draining."""
    state = request.app[STATE_KEY]
    if state.draining:
        raise Draining("draining: finishing in-flight requests before shutdown")
    if not state.ready:
        raise NotReady("starting: not serving yet")
    return web.json_response({"status": "ready"})


def add_probe_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
