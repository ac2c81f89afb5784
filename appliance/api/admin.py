"""/admin/models: what is in memory, and load / unload / pull on demand (admin scope).

Only routes and handlers: the app factory adds auth (admin scope for /admin) and turns
appliance.errors into OpenAI-shaped JSON. `pull` is whatever coroutine the store side puts
in `app[PULL_KEY]` (model id -> JSON-able result); without one, pulling is not offered here.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from aiohttp import web

from ..errors import NotFound

PullFn = Callable[[str], Awaitable[Any]]
PULL_KEY = web.AppKey("appliance_pull", PullFn)  # type: ignore[arg-type]
SCHEDULER_KEY = web.AppKey("appliance_scheduler", object)


def add_admin_routes(app: web.Application, scheduler: Any) -> None:
    app[SCHEDULER_KEY] = scheduler
    app.router.add_get("/admin/models", list_models)
    app.router.add_get("/admin/models/{id}", get_model)
    app.router.add_post("/admin/models/{id}/load", load_model)
    app.router.add_post("/admin/models/{id}/unload", unload_model)
    app.router.add_post("/admin/models/{id}/pull", pull_model)


def _sched(request: web.Request) -> Any:
    return request.app[SCHEDULER_KEY]


async def list_models(request: web.Request) -> web.Response:
    rows = [s.to_json() for s in _sched(request).snapshot()]
    return web.json_response({"object": "list", "data": rows})


async def get_model(request: web.Request) -> web.Response:
    return web.json_response(_sched(request).status(request.match_info["id"]).to_json())


async def load_model(request: web.Request) -> web.Response:
    """Returns once the model is loaded (or with the reason it cannot be)."""
    sched = _sched(request)
    await sched.load(request.match_info["id"])
    return web.json_response(sched.status(request.match_info["id"]).to_json())


async def unload_model(request: web.Request) -> web.Response:
    """Returns once the model is unloaded; its running requests finish first."""
    sched = _sched(request)
    await sched.unload(request.match_info["id"])
    return web.json_response(sched.status(request.match_info["id"]).to_json())


async def pull_model(request: web.Request) -> web.Response:
    pull = request.app.get(PULL_KEY)
    if pull is None:
        raise NotFound("pulling through the API is not available; use `appliance pull`")
    mid = request.match_info["id"]
    _sched(request).status(mid)  # 404 model_not_found for an unknown id, before any download
    result = await pull(mid)
    return web.json_response({"id": mid, "pulled": True, "result": result if _jsonable(result) else None})


def _jsonable(x: Any) -> bool:
    return x is None or isinstance(x, (str, int, float, bool, list, dict))
