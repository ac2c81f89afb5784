"""The one place where errors become HTTP: appliance.errors classes -> OpenAI's error shape.

`{"error": {"message", "type", "param", "code"}}`, with Retry-After when the error carries a
retry hint (429/503, except insufficient_memory: waiting does not free memory) and
`x-should-retry: false` on 500 so the openai client does not hammer a broken request.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from aiohttp import web

from ..errors import (
    ApplianceError,
    InsufficientMemory,
    MethodNotAllowed,
    NotFound,
    RequestTooLarge,
    InvalidRequest,
)

log = logging.getLogger(__name__)

# Statuses where SPEC.md promises a Retry-After even when the raiser set none.
_DEFAULT_RETRY_AFTER = {429: 1.0, 503: 1.0}


def error_payload(exc: ApplianceError) -> dict[str, Any]:
    """The body of an error response, also sent as an SSE event after a stream began."""
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def retry_after(exc: ApplianceError) -> float | None:
    if exc.retry_after is not None:
        return exc.retry_after
    if isinstance(exc, InsufficientMemory):
        return None
    return _DEFAULT_RETRY_AFTER.get(exc.status)


def error_response(exc: ApplianceError, plain: bool = False) -> web.Response:
    """`plain`: Ollama's shape, `{"error": "message"}` (its clients read a string there)."""
    headers: dict[str, str] = {}
    ra = retry_after(exc)
    if ra is not None and exc.status in (429, 503):
        headers["Retry-After"] = str(max(1, math.ceil(ra)))
    if exc.status >= 500 and exc.status not in (503,):
        headers["x-should-retry"] = "false"
    resp = web.Response(
        status=exc.status,
        text=json.dumps({"error": exc.message} if plain else error_payload(exc)),
        content_type="application/json",
        headers=headers,
    )
    if exc.code == "draining":
        resp.force_close()  # tell keep-alive clients to reconnect elsewhere (or later)
    return resp


def from_http_exception(exc: web.HTTPException, request: web.Request) -> ApplianceError | None:
    """aiohttp's own errors (routing, body size) in our shape; None for non-errors (redirects)."""
    if exc.status == 404:
        return NotFound(f"no route {request.method} {request.path}")
    if exc.status == 405:
        allowed = sorted(getattr(exc, "allowed_methods", ()) or ())
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return MethodNotAllowed(f"method {request.method} not allowed on {request.path}{hint}")
    if exc.status == 413:
        limit = request.app.get(MAX_BODY_KEY)
        return RequestTooLarge(f"request body over the limit of {limit} bytes")
    if exc.status >= 400:
        err = InvalidRequest(exc.reason or "bad request")
        err.status = exc.status
        return err
    return None


MAX_BODY_KEY = web.AppKey("max_body_bytes", int)
