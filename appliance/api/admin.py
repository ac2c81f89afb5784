"""/admin/models: what is in memory, and load / unload / pull on demand (admin scope).

Routes and handlers: the app factory adds auth (admin scope for /admin) and turns
appliance.errors into OpenAI-shaped JSON. `pull` is whatever coroutine is in
`app[PULL_KEY]` (model id -> JSON-able result) and a model's bundle signer comes from
`app[SIGNER_KEY]`; `mount_store()` sets both from the store (the daemon calls it). Without
them, pulling is not offered here and `bundle_signer` is null.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from ..config import Catalog
from ..errors import ModelNotFound, NotFound
from .backend import AdminBackend
from .state import API_KEY

if TYPE_CHECKING:
    from ..scheduler.core import ModelStatus

PullFn = Callable[[str], Awaitable[Any]]
SignerFn = Callable[[str], "str | None"]
PULL_KEY: web.AppKey[PullFn] = web.AppKey("appliance_pull")
SIGNER_KEY: web.AppKey[SignerFn] = web.AppKey("appliance_signer")
SCHEDULER_KEY: web.AppKey[AdminBackend] = web.AppKey("appliance_scheduler")


def mount_store(app: web.Application, store: Any, catalog: Callable[[], Catalog]) -> None:
    """Offer `pull` (the store's pull_model, in a worker thread: it blocks for the whole
    download; no progress bar) and each model's bundle signer from its store record."""
    from ..store import pull_model as store_pull

    async def pull(model_id: str) -> dict[str, Any]:
        cfg = catalog().models.get(model_id)
        if cfg is None:
            raise ModelNotFound(f"model {model_id!r} does not exist")
        r = await asyncio.to_thread(store_pull, store, model_id, cfg, progress=False)
        return {"sha256": r.shas, "downloaded": r.downloaded, "up_to_date": r.up_to_date,
                "via": r.via, "unpinned": r.unpinned}

    def signer(model_id: str) -> str | None:
        rec = store.record(model_id)
        return rec.bundle_signer if rec is not None else None

    app[PULL_KEY] = pull
    app[SIGNER_KEY] = signer


def add_admin_routes(app: web.Application, scheduler: AdminBackend) -> None:
    app[SCHEDULER_KEY] = scheduler
    app.router.add_get("/admin/models", list_models)
    app.router.add_get("/admin/models/{id}", get_model)
    app.router.add_post("/admin/models/{id}/load", load_model)
    app.router.add_post("/admin/models/{id}/unload", unload_model)
    app.router.add_post("/admin/models/{id}/pull", pull_model)


def _sched(request: web.Request) -> AdminBackend:
    return request.app[SCHEDULER_KEY]


def _mine(request: web.Request, status: ModelStatus) -> bool:
    """An admin key limited to models sees and acts on those only (open mode: everything)."""
    key = request.get(API_KEY)
    return key is None or key.may_use(status.id)


def _status(request: web.Request) -> ModelStatus:
    """The named model's row, or the same 404 as a missing model when it is not this key's."""
    status = _sched(request).status(request.match_info["id"])
    if not _mine(request, status):
        raise ModelNotFound(f"the model {request.match_info['id']!r} does not exist", param="model")
    return status


def _row(request: web.Request, status: ModelStatus) -> dict[str, Any]:
    """A scheduler status row plus the store's bundle signer (a key fingerprint, or null)."""
    row = status.to_json()
    signer = request.app.get(SIGNER_KEY)
    row["bundle_signer"] = signer(status.id) if signer is not None else None
    return row


async def list_models(request: web.Request) -> web.Response:
    rows = [_row(request, s) for s in _sched(request).snapshot() if _mine(request, s)]
    return web.json_response({"object": "list", "data": rows})


async def get_model(request: web.Request) -> web.Response:
    return web.json_response(_row(request, _status(request)))


async def load_model(request: web.Request) -> web.Response:
    """Returns once the model is loaded (or with the reason it cannot be)."""
    sched = _sched(request)
    _status(request)
    await sched.load(request.match_info["id"])
    return web.json_response(_row(request, sched.status(request.match_info["id"])))


async def unload_model(request: web.Request) -> web.Response:
    """Returns once the model is unloaded; its running requests finish first."""
    sched = _sched(request)
    _status(request)
    await sched.unload(request.match_info["id"])
    return web.json_response(_row(request, sched.status(request.match_info["id"])))


async def pull_model(request: web.Request) -> web.Response:
    pull = request.app.get(PULL_KEY)
    if pull is None:
        raise NotFound("pulling through the API is not available; use `appliance pull`")
    # 404 model_not_found for an unknown id, before any download; an alias pulls its model
    mid = _status(request).id
    result = await pull(mid)
    return web.json_response({"id": mid, "pulled": True, "result": result if _jsonable(result) else None})


def _jsonable(x: Any) -> bool:
    return x is None or isinstance(x, (str, int, float, bool, list, dict))
