"""/admin/models over a real socket (aiohttp test server), scheduler on a fake 24 GB card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from appliance.api.admin import PULL_KEY, add_admin_routes
from appliance.api.middleware import errors
from schedharness import GB, Holder, make, settle


async def client_for(aiohttp_client: Any, sched: Any, pull: Any = None) -> Any:
    app = web.Application(middlewares=[errors])
    add_admin_routes(app, sched)
    if pull is not None:
        app[PULL_KEY] = pull
    return await aiohttp_client(app)


async def test_list_load_unload(aiohttp_client: Any, tmp_path: Path) -> None:
    h = make(tmp_path, {"a": 8 * GB, "b": 20 * GB}, models={"a": {"pinned": False}})
    await h.sched.start()  # headers are read in the background: estimates once they are in
    await settle()
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


async def test_real_server_pulls_from_file_source_and_shows_bundle_signer(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """The daemon wires the store: POST .../pull copies a file:// source into the store (the
    model then serves), GET /admin/models shows each model's bundle signer from its record."""
    import dataclasses
    import hashlib

    import aiohttp
    import openai

    from appliance.store import Store, pull_model
    from test_api_support import serving, write_config

    settings = write_config(tmp_path, {m: {"source": f"file://{tiny_models[m]}", "context": 128} for m in ("a", "b")})
    store = Store.open(settings.config.store.path)
    pull_model(store, "b", settings.catalog.models["b"], progress=False)
    rec = store.record("b")
    assert rec is not None
    store.write_record(dataclasses.replace(rec, bundle_signer="ed25519:0123abcd"))
    sha_a = hashlib.sha256(tiny_models["a"].read_bytes()).hexdigest()
    # open mode: a POST without a JSON body says it is no form post from a web page
    async with serving(settings, store=store) as d, \
            aiohttp.ClientSession(d.url, headers={"X-Requested-With": "test"}) as http:
        async with http.get("/admin/models") as r:
            rows = {m["id"]: m for m in (await r.json())["data"]}
        assert rows["b"]["bundle_signer"] == "ed25519:0123abcd" and rows["a"]["bundle_signer"] is None
        assert store.model_paths("a", settings.catalog.models["a"]) is None
        async with http.post("/admin/models/a/pull") as r:
            assert r.status == 200
            body = await r.json()
        assert body["id"] == "a" and body["result"]["sha256"] == [sha_a] and not body["result"]["up_to_date"]
        assert store.model_paths("a", settings.catalog.models["a"]) is not None
        async with http.post("/admin/models/a/pull") as r:
            assert (await r.json())["result"]["up_to_date"] is True
        async with http.post("/admin/models/nope/pull") as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "model_not_found"
        async with http.get("/admin/models/b") as r:
            assert (await r.json())["bundle_signer"] == "ed25519:0123abcd"
        async with openai.AsyncOpenAI(base_url=d.url + "/v1", api_key="unused", max_retries=0) as c:
            done = await c.completions.create(model="a", prompt="Hello", max_tokens=2,
                                             logit_bias={"2": -100})  # no EOS: exactly 2 tokens
            assert done.model == "a" and done.usage.completion_tokens == 2


async def test_failed_pulls_have_their_own_status_and_code(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hub 404, a corrupt body, a pin the hub disagrees with, a non-GGUF file: 502 with a code
    saying which (they were 500 internal_error), never a crash of the handler."""
    from appliance.api.admin import mount_store
    from appliance.config import Catalog, ModelConfig
    from appliance.store import Store
    from fakehub import FakeHub
    from test_download import blob

    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    h = make(tmp_path, {mid: 1 * GB for mid in ("gone", "corrupt", "pin", "junk", "ok")})
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        good = hub.add("o/r", "good.gguf", blob(4096, 1))
        hub.add("o/r", "bad.gguf", blob(4096, 2))
        hub.behave("bad.gguf", corrupt=True)
        hub.add("o/r", "junk.gguf", b"<html>junk</html>")
        cat = Catalog({
            "gone": ModelConfig(source="hf://o/r/gone.gguf"),
            "corrupt": ModelConfig(source="hf://o/r/bad.gguf"),
            "pin": ModelConfig(source="hf://o/r/good.gguf", sha256="3" * 64),
            "junk": ModelConfig(source="hf://o/r/junk.gguf"),
            "ok": ModelConfig(source="hf://o/r/good.gguf", sha256=good.sha256),
        }, tmp_path / "models.toml")
        app = web.Application(middlewares=[errors])
        add_admin_routes(app, h.sched)
        mount_store(app, Store.open(tmp_path / "store"), lambda: cat)
        c = await aiohttp_client(app)
        want = {"gone": "download_failed", "corrupt": "checksum_mismatch", "pin": "checksum_mismatch", "junk": "not_gguf"}
        for mid, code in want.items():
            r = await c.post(f"/admin/models/{mid}/pull")
            assert (r.status, (await r.json())["error"]["code"]) == (502, code), mid
        r = await c.post("/admin/models/ok/pull")
        assert r.status == 200
