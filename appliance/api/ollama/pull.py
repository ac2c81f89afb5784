"""POST /api/pull: fetch a catalog model into the store (the same verified pull as
`appliance pull`), with Ollama's NDJSON progress: `{"status": "pulling manifest"}`, then
`{"status": "pulling <file>", "digest", "total", "completed"}` lines, `{"status": "verifying
sha256 digest"}` and `{"status": "success"}`. Only catalog models (no registry here); it
writes to the store, so it needs the admin scope (or open mode)."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from aiohttp import web

from ...auth import ADMIN
from ...errors import ApplianceError, InsufficientScope, NotFound
from ..context import CTX_KEY, api_key
from ..schemas import parse_body, read_json
from ..sse import NDJSONStream
from .convert import catalog_name
from .schemas import ModelRequest

PullFn = Callable[[str, Callable[[str, int, "int | None"], None]], Any]  # blocking, in a thread
PULLER_KEY: web.AppKey[PullFn] = web.AppKey("appliance_ollama_pull", PullFn)  # type: ignore[arg-type]


def store_puller(store: Any, catalog: Callable[[], Any]) -> PullFn:
    from ...store import pull_model

    def pull(mid: str, progress: Callable[[str, int, "int | None"], None]) -> Any:
        return pull_model(store, mid, catalog().models[mid], progress=progress)

    return pull


async def pull(request: web.Request) -> web.StreamResponse:
    body = parse_body(ModelRequest, await read_json(request))
    key = api_key(request)
    if key is not None and not key.has_scope(ADMIN):
        raise InsufficientScope(f"key {key.name!r} lacks the 'admin' scope needed to pull a model")
    d = request.app[CTX_KEY].directory
    mid, _ = d.resolve(catalog_name(d.catalog, body.model_name), key)
    puller = request.app.get(PULLER_KEY)
    if puller is None:
        raise NotFound("pulling through the API is not available; use `appliance pull`")
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def progress(name: str, done: int, total: int | None) -> None:  # in the worker thread
        line = {"status": f"pulling {name}", "digest": name, "completed": done}
        if total is not None:
            line["total"] = total
        loop.call_soon_threadsafe(lines.put_nowait, line)

    task: asyncio.Future[Any] = asyncio.ensure_future(asyncio.to_thread(puller, mid, progress))
    if not body.stream:
        await task
        return web.json_response({"status": "success"})
    out = NDJSONStream(request)
    await out.open()
    await out.send({"status": "pulling manifest"})
    try:
        while not task.done() or not lines.empty():
            getter = asyncio.ensure_future(lines.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                continue
            line = getter.result()
            while not lines.empty():  # a slow reader gets the latest figures, not a backlog
                line = lines.get_nowait()
            await out.send(line)
        task.result()
    except ApplianceError as e:
        return await out.error(e)
    await out.send({"status": "verifying sha256 digest"})
    await out.send({"status": "writing manifest"})
    await out.send({"status": "success"})
    await out.done()
    return out.response
