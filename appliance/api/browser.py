"""Browsers on the same machine are clients too, and any web page can make them send requests.

Two attacks, two checks (issue 13 unloaded a model from `https://evil.example` in open mode):
- Cross-site requests (CSRF): a page can POST a form or `text/plain` to localhost without
  asking. An `Origin`, when the browser sends one, must be this server's own or one of
  `server.cors_origins`; a state-changing request without a JSON content type must carry a
  header a page cannot set without a CORS preflight (Authorization, X-Requested-With) or
  come from no browser at all (no `Origin`, which browsers send with every POST, and no
  cross-site `Sec-Fetch-Site`): curl's `-d` works, a page's form post does not (origins.py).
- DNS rebinding: a page's own domain re-pointed at 127.0.0.1 is "same origin" to the
  browser, so the `Host` header is the only tell. Accepted hosts: IP addresses (a rebinding
  page is always reached by a name), `localhost`, `server.host` and `server.allowed_hosts`;
  anything else gets 421.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

from ..errors import CrossSiteRequest, MisdirectedRequest
from .middleware import Handler
from .origins import origin_allowed as cors_allowed
from .origins import plain_body_ok, same_origin

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _hostname(host: str) -> str:
    """'Example.COM:8000' -> 'example.com'; '[::1]:80' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def host_allowed(host: str | None, names: frozenset[str]) -> bool:
    if not host:
        return False
    name = _hostname(host)
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return name == "localhost" or name.endswith(".localhost") or name in names


def origin_allowed(origin: str, host: str | None, cors_origins: Iterable[str]) -> bool:
    """This server's own origin, or one `server.cors_origins` allows (exact, `*`, or any port
    of a host: api/origins.py)."""
    if cors_allowed(origin, cors_origins):
        return True
    return origin != "null" and same_origin(origin, host)


def is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def browser_guard(server_host: str, allowed_hosts: Iterable[str], cors_origins: Iterable[str]) -> Middleware:
    names = frozenset(_hostname(h) for h in [server_host, *allowed_hosts] if h)
    origins = tuple(cors_origins)

    @web.middleware
    async def browser_guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if not host_allowed(host, names):
            raise MisdirectedRequest(
                f"this server does not answer to the host name {_hostname(host or '')!r}; "
                "add it to server.allowed_hosts if it is one of yours")
        if request.method not in SAFE_METHODS:
            origin = request.headers.get("Origin")
            if origin is not None and not origin_allowed(origin, host, origins):
                raise CrossSiteRequest(f"cross-site request from origin {origin!r} refused "
                                       "(allowed: this server and server.cors_origins)")
            if not is_json(request.content_type) and not plain_body_ok(request):
                raise CrossSiteRequest("a POST from a web page needs Content-Type: application/json (or an "
                                       "Authorization or X-Requested-With header): form posts are refused")
        return await handler(request)

    return browser_guard_middleware
