"""The console's HTTP routes.

- `GET /` and `GET /console/static/{file}`: the page, open (it holds no secret; the API key
  is typed into it), with a strict Content-Security-Policy: scripts and styles only from
  this origin's files, nothing inline, connections only back to this origin.
- `GET /console/api/status` (JSON) and `GET /console/api/events` (one SSE stream per page:
  a status document each second, sooner after a change): any valid key; what it shows
  depends on the key (console/status.py).
- `GET|POST /admin/keys`, `POST /admin/keys/{name}/revoke`, `POST /admin/pulls`: admin
  scope (the auth middleware gives /admin that scope).
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from ..api.context import api_key
from ..api.errors import error_payload
from ..api.schemas import parse_body, read_json
from ..api.state import STATE_KEY
from ..auth import ApiKey, create_key, revoke_key
from ..errors import InvalidAPIKey, InvalidRequest, ModelNotFound, NotFound, UsageError
from .status import Console, build_status

CONSOLE_KEY = web.AppKey("appliance_console", Console)
STATIC_PREFIX = "/console/static/"
TICK = 1.0  # seconds between status events when nothing changes
MIN_GAP = 0.25  # at most four events a second, however fast a pull progresses

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every file shipped in appliance/console/static, read once (they are small)."""
    root = resources.files("appliance.console") / "static"
    out = {}
    for f in root.iterdir():
        ext = f.name[f.name.rfind("."):]
        if f.is_file() and ext in _TYPES:
            out[f.name] = (f.read_bytes(), _TYPES[ext])
    return out


def add_console_routes(app: web.Application, console: Console) -> None:
    app[CONSOLE_KEY] = console
    files = _static_files()

    def serve(name: str) -> web.Response:
        if name not in files:
            raise NotFound(f"no console file {name!r}")
        body, ctype = files[name]
        return web.Response(body=body, content_type=ctype, charset="utf-8", headers=PAGE_HEADERS)

    async def page(request: web.Request) -> web.Response:
        return serve("index.html")

    async def static(request: web.Request) -> web.Response:
        return serve(request.match_info["name"])

    app.router.add_get("/", page)
    app.router.add_get(STATIC_PREFIX + "{name}", static)
    app.router.add_get("/console/api/status", status)
    app.router.add_get("/console/api/events", events)
    app.router.add_get("/admin/keys", list_keys)
    app.router.add_post("/admin/keys", new_key)
    app.router.add_post("/admin/keys/{name}/revoke", drop_key)
    app.router.add_post("/admin/pulls", start_pull)


def _status(request: web.Request, *, asking: int) -> dict[str, Any]:
    """`asking`: requests of the console's own in flight besides its open streams (this
    one), left out of the in-flight count like the streams."""
    state, c = request.app[STATE_KEY], request.app[CONSOLE_KEY]
    return build_status(c, api_key(request), ready=state.ready, draining=state.draining,
                        in_flight=max(0, state.in_flight - c.streams - asking))


async def status(request: web.Request) -> web.Response:
    return web.json_response(_status(request, asking=1), headers={"Cache-Control": "no-store"})


def _still_valid(c: Console, key: ApiKey | None) -> bool:
    """A stream outlives its request's auth check: a revoked key's stream must end."""
    if key is None:
        return c.keyring.empty
    now = c.keyring.keys.get(key.name)
    return now is not None and now.sha256 == key.sha256


async def events(request: web.Request) -> web.StreamResponse:
    """`event: status` every TICK (sooner after a change) until the client goes, the
    daemon drains or the key is revoked (then one `event: error`)."""
    c = request.app[CONSOLE_KEY]
    key = api_key(request)
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",
    })
    await resp.prepare(request)
    state = request.app[STATE_KEY]
    c.streams += 1
    try:
        while not state.draining:
            if not _still_valid(c, key):
                err = InvalidAPIKey("the API key was revoked")
                await resp.write(b"event: error\ndata: " + json.dumps(error_payload(err)).encode() + b"\n\n")
                break
            seen = c.changes.version
            doc = _status(request, asking=0)
            await resp.write(b"event: status\ndata: " + json.dumps(doc).encode() + b"\n\n")
            await asyncio.sleep(MIN_GAP)  # coalesce bursts of changes
            await c.changes.wait(seen, TICK - MIN_GAP)
    finally:
        c.streams -= 1
    await resp.write_eof()
    return resp


# --- keys ------------------------------------------------------------------------------------


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    scope: Literal["inference", "admin"] = "inference"
    models: list[str] = []
    rpm: int = Field(0, ge=0)


def _key_json(k: ApiKey) -> dict[str, Any]:
    return {"name": k.name, "scopes": list(k.scopes), "models": list(k.models), "rpm": k.rpm, "created": k.created}


async def list_keys(request: web.Request) -> web.Response:
    keys = request.app[CONSOLE_KEY].keyring.keys
    return web.json_response({"object": "list", "data": [_key_json(k) for k in keys.values()]})


async def new_key(request: web.Request) -> web.Response:
    """Create a key; its token is in this response and nowhere else, ever."""
    body = parse_body(NewKey, await read_json(request))
    c = request.app[CONSOLE_KEY]
    unknown = [m for m in body.models if c.catalog().resolve(m) is None]
    if unknown:
        raise InvalidRequest(f"unknown model {unknown[0]!r}", param="models")
    try:
        token, key = await asyncio.to_thread(
            create_key, c.keyring.path, body.name, scope=body.scope, models=body.models, rpm=body.rpm)
    except UsageError as e:
        raise InvalidRequest(e.message, param="name") from None
    c.changes.notify()
    return web.json_response({"token": token, "key": _key_json(key)}, status=201,
                             headers={"Cache-Control": "no-store"})


async def drop_key(request: web.Request) -> web.Response:
    c = request.app[CONSOLE_KEY]
    name = request.match_info["name"]
    try:
        await asyncio.to_thread(revoke_key, c.keyring.path, name)
    except UsageError:
        raise NotFound(f"no key named {name!r}") from None
    c.changes.notify()
    return web.json_response({"name": name, "revoked": True})


# --- pulls -----------------------------------------------------------------------------------


class NewPull(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str


async def start_pull(request: web.Request) -> web.Response:
    """Start pulling a catalog model; progress arrives on the status stream."""
    c = request.app[CONSOLE_KEY]
    if c.pulls is None:
        raise NotFound("pulling through the API is not available; use `appliance pull`")
    body = parse_body(NewPull, await read_json(request))
    found = c.catalog().resolve(body.model)
    if found is None:
        raise ModelNotFound(f"the model {body.model!r} does not exist", param="model")
    row = c.pulls.start(found[0])
    return web.json_response(row.to_json(), status=202)
