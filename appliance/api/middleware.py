"""Middlewares, outermost first: request context, errors, CORS preflight, draining, body
limit, authentication. Each has one job; `create_app` stacks them in this order."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from ..auth import ADMIN, INFERENCE, Keyring
from ..errors import ApplianceError, Draining, InsufficientScope, NotReady, RequestTooLarge
from .errors import MAX_BODY_KEY, error_response, from_http_exception
from .origins import origin_allowed
from .state import API_KEY, REQUEST_ID, STATE_KEY, RequestRecord, request_facts, request_id_var

log = logging.getLogger("appliance.api")
access_log = logging.getLogger("appliance.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPEN_PATHS = frozenset({"/health", "/ready", "/api/version"})  # Ollama clients probe the version keyless
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
REQUEST_ID_HEADER = "x-request-id"


def log_safe(text: str, limit: int = 512) -> str:
    """A client-supplied string for a text log line: control characters (CR, LF, ESC, ...)
    and other unprintables as \\x/\\u escapes, cut at `limit` characters."""
    if text.isprintable() and len(text) <= limit:
        return text
    out = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[:limit])
    return out + ("..." if len(text) > limit else "")


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id (the client's x-request-id when sane), time it, log it once,
    and tell the on_request hooks. Clients that hang up are logged as status 499."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    rid = incoming if _CLIENT_ID_RE.match(incoming) else new_request_id()
    request[REQUEST_ID] = rid
    token = request_id_var.set(rid)
    state = request.app[STATE_KEY]
    facts = request_facts(request)
    start = time.perf_counter()
    status = 500
    state.in_flight += 1
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except asyncio.CancelledError:
        status = 499  # client closed the connection; the handler's finally blocks freed its work
        raise
    finally:
        state.in_flight -= 1
        latency = time.perf_counter() - start
        access_log.info(  # client-controlled fields escaped: no forged lines, no terminal escapes
            "%s %s %d %.3fs key=%s model=%s tokens=%d+%d",
            log_safe(request.method), log_safe(request.path), status, latency, log_safe(facts.key_name or "-"),
            log_safe(facts.model or "-"), facts.prompt_tokens, facts.completion_tokens,
        )
        record = RequestRecord(
            request_id=rid, method=request.method, path=request.path, status=status, latency_s=latency,
            **dataclasses.asdict(facts),
        )
        for hook in list(state.on_request):
            try:
                hook(record)
            except Exception:  # a metrics bug must not break serving
                log.exception("on_request hook failed")
        request_id_var.reset(token)


async def add_request_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: headers every response needs, streams included (they are sent
    before a middleware could touch them)."""
    rid = request.get(REQUEST_ID)
    if rid:
        response.headers[REQUEST_ID_HEADER] = rid


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as OpenAI's error shape (mapping in api/errors.py)."""
    logged = False  # an unhandled exception is logged with its traceback where it is caught
    try:
        return await handler(request)
    except ApplianceError as e:
        err = e
    except web.HTTPException as e:
        mapped = from_http_exception(e, request)
        if mapped is None:
            raise
        err = mapped
    except asyncio.CancelledError:
        raise
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError: the client hung up
        request_facts(request).error_code = "client_closed"
        return web.Response(status=499)  # logged and counted as such; nobody reads it
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        err = ApplianceError("internal error; the server log has details (request id in x-request-id)")
        logged = True
    request_facts(request).error_code = err.code
    if err.status >= 500 and not logged:  # the engine's own failures too: the log must say what went wrong
        log.warning("%s: %s", err.code, err.message)
    return error_response(err, plain=request.path.startswith("/api/"))  # Ollama's routes


@dataclass(frozen=True)
class Cors:
    """The CORS middleware and the response hook that marks allowed origins' responses."""

    middleware: Middleware
    on_prepare: Callable[[web.Request, web.StreamResponse], Awaitable[None]]


def cors(origins: list[str]) -> Cors:
    """Answer preflights on every route for allowed origins (api/origins.py: exact, `*`, or
    any port of a host) and mark their responses. Small on purpose: the whole API is
    header-authenticated, so no cookies and never `Access-Control-Allow-Credentials`."""
    allow_any = "*" in origins
    patterns = tuple(origins)

    def origin_ok(origin: str | None) -> bool:
        return origin_allowed(origin, patterns)

    @web.middleware
    async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if (
            request.method == "OPTIONS"
            and origin_ok(origin)
            and "Access-Control-Request-Method" in request.headers
        ):
            req_headers = request.headers.get("Access-Control-Request-Headers", "")
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                    "Access-Control-Allow-Headers": req_headers or "Authorization, Content-Type",
                    "Access-Control-Max-Age": "600",
                },
            )
        return await handler(request)

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin_ok(origin):
            response.headers["Access-Control-Allow-Origin"] = "*" if allow_any else origin  # type: ignore[assignment]
            response.headers["Access-Control-Expose-Headers"] = "x-request-id, Retry-After"
            if not allow_any:
                response.headers.add("Vary", "Origin")

    return Cors(cors_middleware, on_prepare)


@web.middleware
async def draining(request: web.Request, handler: Handler) -> web.StreamResponse:
    """While draining, new requests get 503 draining (and Connection: close); while starting
    (the listener opens before pinned models load), 503 not_ready with Retry-After. Probes
    and the console's page pass (the page then shows the state and retries)."""
    state = request.app[STATE_KEY]
    if request.path not in OPEN_PATHS and not is_page_path(request.path):
        if state.draining:
            raise Draining("the server is shutting down; retry on another instance or later")
        if not state.ready:
            raise NotReady("the server is starting (loading pinned models); retry shortly")
    return await handler(request)


@web.middleware
async def body_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a declared oversized body before reading it (aiohttp's client_max_size catches
    undeclared, chunked ones while reading; both become 413 request_too_large)."""
    limit = request.app[MAX_BODY_KEY]
    length = request.content_length
    if length is not None and length > limit:
        raise RequestTooLarge(f"request body of {length} bytes is over the limit of {limit} bytes")
    return await handler(request)


def is_page_path(path: str) -> bool:
    """The web console's page and static files: open, they hold no secret (the key is
    typed into the page, whose own requests carry it like any client's)."""
    return path == "/" or path.startswith("/console/static/")


def required_scope(path: str, metrics_public: bool) -> str | None:
    """None for open probes and the console's page, 'admin' for /admin and /metrics,
    'inference' for the rest."""
    if path in OPEN_PATHS or is_page_path(path) or (path == "/metrics" and metrics_public):
        return None
    if path == "/metrics" or path == "/admin" or path.startswith("/admin/"):
        return ADMIN
    return INFERENCE


def auth(keyring: Keyring, *, open_without_keys: bool, metrics_public: bool) -> Middleware:
    """Bearer-token auth and scope check (a key's rate limit is spent where an inference
    request is admitted: api/context.py's resolve_model).

    `open_without_keys`: with no keys at all, let everything through (the solo developer on
    loopback); the daemon refuses to listen beyond loopback without keys."""

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[API_KEY] = None
        scope = required_scope(request.path, metrics_public)
        if scope is None or (open_without_keys and keyring.empty):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        key = keyring.authenticate(token.strip() if scheme.lower() == "bearer" else None)
        request_facts(request).key_name = key.name
        if not key.has_scope(scope):
            raise InsufficientScope(f"key {key.name!r} lacks the {scope!r} scope needed for {request.path}")
        request[API_KEY] = key
        return await handler(request)

    return auth_middleware
