"""The listening socket, hardened: a connection cap below the fd limit, and aiohttp's own
protocol errors (bad request lines, oversized headers) in OpenAI's error shape.

Why here and not in a middleware: both happen before aiohttp builds a request. At the fd
limit, asyncio's accept loop logs `socket.accept() out of system resource` thousands of
times a second and /health becomes unreachable (issue 13); a cap a little below the limit
answers the extra connection with one 503 and closes it, logging one line a minute.
Slow headers and idle keep-alive sockets are closed by aiohttp's keep-alive timer, which
runs from the moment a connection opens (`keepalive_timeout` = server.idle_timeout).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..errors import ApplianceError, InvalidRequest, MethodNotAllowed, RequestTooLarge
from .errors import error_payload
from .middleware import log_safe

log = logging.getLogger(__name__)

FD_RESERVE = 128  # descriptors kept for model files, logs, the admin socket, outgoing fetches
LOG_EVERY_S = 60.0


def base_url(host: str, port: int, tls: bool) -> str:
    """The URL a listener on host:port answers at (IPv6 literals bracketed)."""
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


def default_max_connections() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(16, soft - FD_RESERVE)


def _json_response(status: int, err: ApplianceError) -> bytes:
    body = json.dumps(error_payload(err)).encode()
    reason = {400: "Bad Request", 413: "Request Entity Too Large", 431: "Request Header Fields Too Large",
              405: "Method Not Allowed", 500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n")
    if status == 503:
        head += "Retry-After: 1\r\n"
    return head.encode() + b"\r\n" + body


class JsonErrorRequestHandler(RequestHandler):
    """aiohttp's handler with its own error responses (400 for unparsable HTTP, 500 as a
    last resort) in OpenAI's shape instead of text/plain, logged as one line."""

    __slots__ = ()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp's: too late for an error page
            raise ConnectionError("the response is partly sent; cannot send an error response")
        if status >= 500:
            log.error("aiohttp could not handle a request: %r", exc)
            err: ApplianceError = ApplianceError("internal error; the server log has details")
        else:
            detail = getattr(exc, "message", None) or message or "malformed HTTP request"
            err = {405: MethodNotAllowed, 413: RequestTooLarge}.get(status, InvalidRequest)(
                f"malformed HTTP request: {log_safe(str(detail))}")
            err.status = status
            log.info("refused a malformed HTTP request (%d): %s", status, log_safe(str(detail)))
        resp = web.Response(status=status, text=json.dumps(error_payload(err)), content_type="application/json")
        resp.force_close()
        return resp


class _Refused(asyncio.Protocol):
    """A connection over the cap: one 503, then closed (its descriptor is freed at once)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        err = ApplianceError("too many open connections; retry shortly")
        err.code = "too_many_connections"
        try:
            transport.write(_json_response(503, err))  # type: ignore[attr-defined]
        finally:
            transport.close()


class ConnectionGate:
    """The protocol factory: aiohttp's handler while under `cap` connections, else a refusal."""

    def __init__(self, server: web.Server, cap: int) -> None:
        self.server = server
        self.cap = cap
        self.refused = 0
        self._unlogged = 0
        self._last_log = -LOG_EVERY_S

    def __call__(self) -> asyncio.Protocol:
        if len(self.server.connections) >= self.cap:
            self.refused += 1
            self._unlogged += 1
            now = time.monotonic()
            if now - self._last_log >= LOG_EVERY_S:
                log.warning("connection cap of %d reached (server.max_connections): refused %d connection(s)",
                            self.cap, self._unlogged)
                self._unlogged, self._last_log = 0, now
            return _Refused()
        handler = self.server()
        # Same object, our error pages: aiohttp builds its handler from private settings,
        # so the class is swapped rather than the handler rebuilt (no state is added).
        handler.__class__ = JsonErrorRequestHandler
        return handler


class HardenedSite(web.BaseSite):
    """A TCP site whose connections go through a `ConnectionGate`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, ssl_context: Any = None,
                 max_connections: int | None = None) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port = host, port
        self.gate: ConnectionGate | None = None
        self._cap = max_connections or default_max_connections()

    @property
    def name(self) -> str:
        return base_url(self._host, self._port, self._ssl_context is not None)

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self.gate = ConnectionGate(server, self._cap)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.gate, self._host, self._port, ssl=self._ssl_context,
                                                backlog=self._backlog, reuse_address=True)
