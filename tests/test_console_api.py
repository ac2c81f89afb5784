"""The web console's server side on a real listening daemon: the open page and its CSP,
the status document per scope, the SSE status stream, key and pull actions. The page
itself is driven in a real browser in test_console_browser.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from appliance.api.state import RequestRecord
from appliance.auth import create_key, revoke_key
from appliance.clock import FakeClock
from appliance.console.activity import Activity
from appliance.console.pulls import Pulls
from appliance.errors import ChecksumMismatch
from test_api_support import pull_all, serving, write_config


@pytest.fixture
def env(tmp_path: Path, tiny_models: dict[str, Path]):  # noqa: ANN201
    settings = write_config(tmp_path, {
        "tiny": {"source": f"file://{tiny_models['a']}", "context": 256, "parallel": 2},
        "other": {"source": f"file://{tiny_models['b']}", "context": 256},
    })
    store = pull_all(settings)
    keys = {
        "admin": create_key(settings.keys_path, "root", scope="admin")[0],
        "user": create_key(settings.keys_path, "app", models=["tiny"])[0],
    }
    return settings, store, keys


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _get(url: str, token: str | None = None) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers=_h(token) if token else {}) as r:
            body = await r.read()
            try:
                return r.status, r.headers, json.loads(body)
            except ValueError:
                return r.status, r.headers, body


async def _post(url: str, token: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url, headers=_h(token), json=body) as r:
            return r.status, await r.json()


async def _events(url: str, token: str) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) pairs of the console's status stream, as they arrive."""
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/console/api/events", headers=_h(token)) as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
            event = ""
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    yield event, json.loads(line[6:])


async def test_page_is_open_with_a_strict_csp_and_only_known_files(env) -> None:  # noqa: ANN001
    settings, store, _ = env
    async with serving(settings, store=store) as d:
        st, headers, body = await _get(d.url + "/")
        assert st == 200 and headers["Content-Type"].startswith("text/html")
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp and "default-src 'none'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert b"<script src=\"/console/static/console.js\"" in body and b"<style" not in body
        st, headers, js = await _get(d.url + "/console/static/console.js")
        assert st == 200 and headers["Content-Type"].startswith("text/javascript")
        assert b"sessionStorage" in js and b"localStorage" not in js and b"document.cookie" not in js
        st, _, err = await _get(d.url + "/console/static/nope.js")
        assert st == 404 and err["error"]["code"] == "not_found"
        st, _, err = await _get(d.url + "/console/static/..%2f__init__.py")
        assert st == 404
        d.state.ready = False  # starting: the page loads (and says so), the API waits
        assert (await _get(d.url + "/"))[0] == 200
        st, _, err = await _get(d.url + "/console/api/status")
        assert st == 503 and err["error"]["code"] == "not_ready"


async def test_status_depends_on_the_key(env) -> None:  # noqa: ANN001
    settings, store, keys = env
    async with serving(settings, store=store) as d:
        st, _, err = await _get(d.url + "/console/api/status")
        assert st == 401 and err["error"]["code"] == "invalid_api_key"
        st, _, err = await _get(d.url + "/console/api/status", "sk-appl-wrong")
        assert st == 401
        st, _, admin = await _get(d.url + "/console/api/status", keys["admin"])
        assert st == 200 and admin["key"] == {"name": "root", "admin": True}
        assert {m["id"]: m["state"] for m in admin["models"]} == {"tiny": "verified", "other": "verified"}
        assert {k["name"] for k in admin["keys"]} == {"root", "app"}
        assert [dev["kind"] for dev in admin["devices"]] == ["cpu"]  # RAM on this CPU box
        ram = admin["devices"][0]
        assert ram["total"] > 0 and 0 <= ram["free"] <= ram["total"] and ram["budget_auto"]
        st, _, user = await _get(d.url + "/console/api/status", keys["user"])
        assert user["key"] == {"name": "app", "admin": False}
        assert [m["id"] for m in user["models"]] == ["tiny"]  # as /v1/models: only its own
        assert "keys" not in user and "usage" not in user and "pulls" not in user
        for path in ("/admin/keys", "/admin/models/tiny/unload"):
            async with aiohttp.ClientSession() as s:
                async with s.request("GET" if path.endswith("keys") else "POST", d.url + path,
                                     headers=_h(keys["user"]), json={}) as r:
                    assert r.status == 403 and (await r.json())["error"]["code"] == "insufficient_scope"


async def test_status_shows_load_slots_traffic_and_unload_countdown(env) -> None:  # noqa: ANN001
    settings, store, keys = env
    async with serving(settings, store=store) as d:
        st, _ = await _post(d.url + "/admin/models/tiny/load", keys["admin"], {})
        assert st == 200
        async with aiohttp.ClientSession() as s:
            async with s.post(d.url + "/v1/chat/completions", headers=_h(keys["user"]),
                              json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                    "max_tokens": 4}) as r:
                assert r.status == 200
        _, _, doc = await _get(d.url + "/console/api/status", keys["admin"])
        tiny = next(m for m in doc["models"] if m["id"] == "tiny")
        assert tiny["state"] == "loaded" and tiny["residency"] == "loaded" and tiny["store"] == "verified"
        assert tiny["slots_total"] == 2 and tiny["slots_busy"] == 0 and tiny["memory"] > 0
        assert 0 < tiny["unload_in_s"] <= 300  # keep_alive 5m, idle since the request
        assert tiny["recent"]["requests"] == 1 and tiny["recent"]["ttft_s"] is not None
        ram = doc["devices"][0]
        assert ram["models"] == tiny["memory"]  # the resident model is charged to RAM
        assert doc["usage"]["app"]["requests"] == 1 and doc["usage"]["app"]["completion_tokens"] > 0
        assert doc["traffic"]["requests"] == 2  # the load and the chat; the console's own not
        assert doc["server"]["in_flight"] == 0  # nor is this status request


async def test_event_stream_sends_status_and_ends_when_the_key_is_revoked(env) -> None:  # noqa: ANN001
    settings, store, keys = env
    async with serving(settings, store=store) as d:
        stream = _events(d.url, keys["user"])
        event, doc = await anext(stream)
        assert event == "status" and [m["id"] for m in doc["models"]] == ["tiny"]
        assert doc["server"]["in_flight"] == 0  # the stream itself is not counted
        revoke_key(settings.keys_path, "app")
        async for event, doc in stream:
            if event == "error":
                assert doc["error"]["code"] == "invalid_api_key"
                break
        else:
            pytest.fail("the stream ended without an error event")


async def test_event_stream_ends_when_the_daemon_drains(env) -> None:  # noqa: ANN001
    """An open console must not hold the drain up for drain_timeout."""
    settings, store, keys = env
    async with serving(settings, store=store) as d:
        stream = _events(d.url, keys["admin"])
        await anext(stream)
        assert d.state.in_flight == 1
        d.state.draining = True
        async for _ in stream:
            pass  # ends: the loop saw the drain (else this test hangs until pytest's timeout)


async def test_keys_created_and_revoked_through_the_api(env) -> None:  # noqa: ANN001
    settings, store, keys = env
    async with serving(settings, store=store) as d:
        st, made = await _post(d.url + "/admin/keys", keys["admin"], {"name": "bob", "models": ["tiny"], "rpm": 5})
        assert st == 201 and made["token"].startswith("sk-appl-") and made["key"]["rpm"] == 5
        assert made["token"] not in settings.keys_path.read_text()  # only its hash is kept
        st, _, models = await _get(d.url + "/v1/models", made["token"])
        assert st == 200 and [m["id"] for m in models["data"]] == ["tiny"]
        st, err = await _post(d.url + "/admin/keys", keys["admin"], {"name": "bob"})
        assert st == 400 and err["error"]["param"] == "name" and "exists" in err["error"]["message"]
        st, err = await _post(d.url + "/admin/keys", keys["admin"], {"name": "x", "models": ["nope"]})
        assert st == 400 and err["error"]["param"] == "models"
        st, err = await _post(d.url + "/admin/keys", keys["admin"], {"name": "x", "scope": "root"})
        assert st == 400 and err["error"]["param"] == "scope"
        _, _, listing = await _get(d.url + "/admin/keys", keys["admin"])
        assert "bob" in {k["name"] for k in listing["data"]} and all("sha256" not in k for k in listing["data"])
        st, out = await _post(d.url + "/admin/keys/bob/revoke", keys["admin"], {})
        assert st == 200 and out == {"name": "bob", "revoked": True}
        assert (await _get(d.url + "/v1/models", made["token"]))[0] == 401
        st, err = await _post(d.url + "/admin/keys/bob/revoke", keys["admin"], {})
        assert st == 404


async def test_pull_progress_then_verified(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    settings = write_config(tmp_path, {"tiny": {"source": f"file://{tiny_models['a']}"}})
    admin = create_key(settings.keys_path, "root", scope="admin")[0]
    async with serving(settings) as d:
        _, _, doc = await _get(d.url + "/console/api/status", admin)
        assert doc["models"][0]["state"] == "missing"
        seen: list[dict[str, Any]] = []
        stream = _events(d.url, admin)
        await anext(stream)
        st, row = await _post(d.url + "/admin/pulls", admin, {"model": "tiny"})
        assert st == 202 and row["model"] == "tiny" and row["state"] == "running"
        async for _, doc in stream:
            seen.extend(doc["pulls"])
            if doc["pulls"] and doc["pulls"][0]["state"] != "running":
                break
        final = seen[-1]
        size = tiny_models["a"].stat().st_size
        assert final["state"] == "done" and final["done"] == final["total"] == size
        assert doc["models"][0]["state"] == "verified"
        st, err = await _post(d.url + "/admin/pulls", admin, {"model": "nope"})
        assert st == 404 and err["error"]["code"] == "model_not_found"


async def test_a_failed_pull_is_shown_with_its_reason() -> None:
    def pull(model_id: str, progress: Any) -> None:
        progress("m.gguf", 10, 100)
        raise ChecksumMismatch("m.gguf", "a" * 64, "b" * 64)

    changed = asyncio.Event()
    pulls = Pulls(pull, changed.set)
    row = pulls.start("m")
    await pulls.close()
    assert row.state == "failed" and "m.gguf" in (row.error or "") and row.done == 10
    assert changed.is_set()


def test_activity_window_moves_with_the_clock() -> None:
    clock = FakeClock()
    a = Activity(clock, window=60)

    def rec(status: int, **kw: Any) -> RequestRecord:
        base = dict(request_id="r", method="POST", path="/v1/chat/completions", key_name="k", model="m",
                    status=status, prompt_tokens=3, completion_tokens=5, latency_s=0.1)
        return RequestRecord(**{**base, **kw})

    a.on_request(rec(200, ttft_s=0.2, decode_tokens_per_s=50.0))
    a.on_request(rec(429, completion_tokens=0, error_code="queue_full"))
    a.on_request(rec(200, path="/console/api/events"))  # the console's own stream: not traffic
    s = a.summary()
    assert s["requests"] == 2 and s["errors"] == 1 and s["last_errors"][0]["code"] == "queue_full"
    assert s["models"]["m"]["ttft_s"] == 0.2 and s["models"]["m"]["tokens_per_s"] == 50.0
    clock.advance(61)
    assert a.summary()["requests"] == 0 and a.summary()["models"] == {}
    assert a.keys()["k"]["requests"] == 2 and a.keys()["k"]["errors"] == 1  # since start


async def test_a_client_gone_mid_stream_is_499_not_an_internal_error(caplog: pytest.LogCaptureFixture) -> None:
    """The stop button closes the connection; when a write notices before aiohttp cancels
    the handler, that is the client leaving, not a server failure to log with a traceback."""
    from aiohttp.test_utils import make_mocked_request

    from appliance.api.middleware import errors

    async def handler(request: Any) -> Any:
        raise ConnectionResetError("Cannot write to closing transport")

    resp = await errors(make_mocked_request("POST", "/v1/chat/completions"), handler)
    assert resp.status == 499
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")]


def test_device_rows_charge_models_and_show_budgets_and_sensors() -> None:
    """Two fake 24 GiB GPUs (a GPU's memory is the one thing faked), a fixed budget on each,
    NVML sensors on one; a resident model is charged to its device only."""
    from types import SimpleNamespace

    from appliance.config import MemoryConfig
    from appliance.console.devices import DeviceReadings, device_rows
    from appliance.hardware import FakeHardware, GpuStats

    gib = 1024**3
    hw = FakeHardware.gpus(24 * gib, 24 * gib)
    hw.set_free(0, 14 * gib)
    sensors = [GpuStats(0, "Fake GPU 0", 24 * gib, 14 * gib, 10 * gib, 61.0, 250.0, 87.0)]
    readings = DeviceReadings(hw, lambda: sensors, FakeClock())
    model = SimpleNamespace(state="loaded", device="cuda:0", memory_measured=6 * gib, memory_estimated=7 * gib)
    idle = SimpleNamespace(state="unloaded", device=None, memory_measured=None, memory_estimated=3 * gib)
    fixed = device_rows(readings, MemoryConfig(budget=20 * gib), [model, idle])
    assert [(r["label"], r["models"], r["budget"], r["budget_auto"]) for r in fixed] == [
        ("cuda:0", 6 * gib, 20 * gib, False), ("cuda:1", 0, 20 * gib, False)]
    assert (fixed[0]["utilisation_pct"], fixed[0]["temperature_c"]) == (87.0, 61.0)
    assert fixed[1]["utilisation_pct"] is None
    auto = device_rows(readings, MemoryConfig(budget="auto", reserve=gib), [model])
    assert auto[0]["budget"] == 14 * gib + 6 * gib - gib  # free + ours - reserve
    reads = hw.reads
    device_rows(readings, MemoryConfig(), [])
    assert hw.reads == reads  # within a second: the cached reading
