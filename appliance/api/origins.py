"""Which web origins may call the API from a browser, and when a body without a JSON
content type is still taken as JSON.

`server.cors_origins` entries are exact origins (`https://app.example`), `*`, or an origin
with any port (`http://localhost:*`, the default's form). Browsers send `Origin` on every
cross-origin request; scripts and SDKs send none.
"""

from __future__ import annotations

from typing import Iterable
from urllib.parse import urlsplit

from aiohttp import web


def origin_matches(origin: str, pattern: str) -> bool:
    """`pattern` is `*`, an exact origin, or `scheme://host:*` (any port, or none)."""
    if pattern == "*":
        return True
    if pattern.endswith(":*"):
        base = pattern[:-2]
        if origin == base:
            return True
        head, sep, port = origin.rpartition(":")
        return bool(sep) and head == base and port.isdigit()
    return origin == pattern


def origin_allowed(origin: str | None, patterns: Iterable[str]) -> bool:
    return bool(origin) and origin != "null" and any(origin_matches(origin, p) for p in patterns)  # type: ignore[arg-type]


def same_origin(origin: str, host: str | None) -> bool:
    """The page was served by this server (the web console)."""
    return bool(host) and urlsplit(origin).netloc.lower() == (host or "").strip().lower()


def plain_body_ok(request: web.Request) -> bool:
    """A POST without a JSON content type is taken (curl -d, simple scripts; its body read as
    JSON) unless it may be a cross-site browser request: a page can send a form or `text/plain`
    to localhost without a preflight, but it cannot add an Authorization header, and browsers
    send `Origin` with every POST (and `Sec-Fetch-Site`). The browser guard (api/browser.py)
    applies this to every state-changing request, read_json to every JSON body."""
    if "Authorization" in request.headers or "X-Requested-With" in request.headers:
        return True  # a page cannot add these without a preflight
    origin = request.headers.get("Origin")
    if origin is not None:
        return same_origin(origin, request.headers.get("Host"))
    return request.headers.get("Sec-Fetch-Site", "none") in ("none", "same-origin")
