"""/admin/models over a real socket (aiohttp test server), scheduler on a fake 24 GB card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from appliance.api.admin import PULL_KEY, add_admin_routes
from appliance.api.middleware import errors
from schedharness import GB, Holder, make


async def client_for(aiohttp_client: Any, sched: Any, pull: Any = None) -> Any:
    app = web.Application(middlewares=[errors])
    add_admin_routes(app, sched)
    if pull is not None:
        app[PULL_KEY] = pull
    return await aiohttp_client(app)


async def test_list_load_unload(aiohttp_client: Any, tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 8 * GB, "b": 20 * GB}, models={"a": {"pinned": False}})
    c = await client_for(aiohttp_client, h.sched)
    r = await c.get("/admin/models")
    assert r.status == 200
    rows = {m["id"]: m for m in (await r.json())["data"]}
    assert rows["a"]["state"] == "unloaded" and rows["a"]["memory_estimated"] == 8 * GB
    assert set(rows["a"]) >= {"state", "memory_estimated", "memory_measured", "device", "slots_busy",
                              "queue_depth", "last_used", "sha256", "source"}
    r = await c.post("/admin/models/a/load")
    body = await r.json()
    assert r.status == 200 and body["state"] == "loaded" and body["device"] == "cuda:0"
    assert body["memory_measured"] == 8 * GB
    hold = Holder(h, "a")
    await hold.admitted.wait()
    r = await c.get("/admin/models/a")
    assert (await r.json())["slots_busy"] == 1
    await hold.done()
    r = await c.post("/admin/models/a/unload")
    assert (await r.json())["state"] == "unloaded" and h.runners[0].closed


async def test_errors_are_openai_shaped(aiohttp_client: Any, tmp_path: Path) -> None:
    h = make(tmp_path, {"p": 10 * GB, "big": 20 * GB}, models={"p": {"pinned": True}})
    await h.sched.start()
    c = await client_for(aiohttp_client, h.sched)
    r = await c.post("/admin/models/big/load")
    assert r.status == 503
    err = (await r.json())["error"]
    assert err["code"] == "insufficient_memory" and "GiB" in err["message"]
    assert "Retry-After" not in r.headers
    r = await c.post("/admin/models/nope/load")
    assert r.status == 404 and (await r.json())["error"]["code"] == "model_not_found"
    r = await c.post("/admin/models/p/pull")
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"


async def test_pull_calls_the_injected_function(aiohttp_client: Any, tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 1 * GB})
    pulled: list[str] = []

    async def pull(mid: str) -> dict[str, str]:
        pulled.append(mid)
        return {"sha256": "ab" * 32}

    c = await client_for(aiohttp_client, h.sched, pull)
    r = await c.post("/admin/models/a/pull")
    assert r.status == 200 and (await r.json())["result"] == {"sha256": "ab" * 32}
    r = await c.post("/admin/models/zzz/pull")
    assert r.status == 404
    assert pulled == ["a"]
