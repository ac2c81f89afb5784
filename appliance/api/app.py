"""`create_app`: the aiohttp application with every middleware and route, nothing started.

Middlewares, outermost first: request context (id, log line, hooks) -> errors (one
mapping) -> browser guard (Host, cross-site POSTs) -> CORS preflight -> draining -> body limit
-> auth (a key's rate limit is spent when an inference request is admitted: api/context.py).
Routes: probes, /v1 (OpenAI, Responses), /infill and /tokenize (llama-server's), /api (Ollama's),
/admin (scheduler's, admin scope by path), the web console at / (appliance/console). The
daemon owns the AppRunner/TCPSite (handler_cancellation=True) so
the drain can keep the listener open.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from aiohttp import web

from ..auth import Keyring, RateLimiter
from ..config import Catalog, Settings
from .admin import add_admin_routes
from .backend import AdminBackend
from .browser import browser_guard
from .chat import chat_completions
from .completions import completions
from .context import CTX_KEY, KEYRING_KEY, ApiContext
from .directory import ModelDirectory
from .embeddings import embeddings
from .errors import MAX_BODY_KEY
from .infill import infill
from .middleware import add_request_headers, auth, body_limit, cors, draining, errors, request_context
from .models_routes import add_model_routes
from .ollama import add_ollama_routes
from .probes import add_probe_routes
from .images import IMAGES_KEY, ImageLimits
from .responses import add_responses_routes
from .state import STATE_KEY, AppState
from .timeouts import TIMEOUTS_KEY, Timeouts
from .tokenize import detokenize, tokenize


def create_app(
    settings: Settings,
    *,
    backend: AdminBackend,
    keyring: Keyring,
    state: AppState | None = None,
    catalog: Callable[[], Catalog] | None = None,
    store: Any = None,
    limiter: RateLimiter | None = None,
    open_without_keys: bool = True,
) -> web.Application:
    """Build the app. `catalog` returns the live catalog (models.toml may be re-read);
    `open_without_keys` is True only when listening on loopback; the backend's admin routes
    are mounted under /admin (admin scope)."""
    server = settings.config.server
    live_catalog: Callable[[], Catalog] = catalog or (lambda: settings.catalog)
    cors_mw = cors(list(server.cors_origins))
    guard = browser_guard(server.host, server.allowed_hosts, server.cors_origins)
    middlewares = [request_context, errors, guard, cors_mw.middleware, draining, body_limit,
                   auth(keyring, open_without_keys=open_without_keys, metrics_public=server.metrics_public)]
    # client_max_size: aiohttp's own 413 for bodies that lie about (or omit) their length.
    app = web.Application(middlewares=middlewares, client_max_size=server.max_body_bytes)
    app[MAX_BODY_KEY] = server.max_body_bytes
    app[IMAGES_KEY] = ImageLimits(fetch_urls=server.fetch_image_urls, max_images=server.max_images,
                                  max_pixels=server.max_image_pixels, max_bytes=server.max_body_bytes)
    app[KEYRING_KEY] = keyring
    app[TIMEOUTS_KEY] = Timeouts(body_s=server.body_timeout, write_s=server.write_timeout)
    app[STATE_KEY] = state or AppState()
    app[CTX_KEY] = ApiContext(
        directory=ModelDirectory(live_catalog, store, started=time.time()),
        backend=backend,
        limiter=limiter or RateLimiter(),
    )
    app.on_response_prepare.append(add_request_headers)
    app.on_response_prepare.append(cors_mw.on_prepare)
    add_probe_routes(app)
    add_model_routes(app)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/infill", infill)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)
    add_responses_routes(app)
    add_ollama_routes(app, store, live_catalog)
    add_admin_routes(app, backend)
    from ..console import add_console

    add_console(app, settings, catalog=live_catalog, keyring=keyring,
                state=app[STATE_KEY], scheduler=backend, store=store)
    return app
