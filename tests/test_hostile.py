"""Issue 13: hostile clients against a real daemon (tiny random-weight models, real sockets).
Each test is one finding; docs/security.md describes the defences."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance.config import load_settings
from appliance.engine.runner import Runner
from appliance.config import ModelConfig
from test_api_support import pull_all, serving, write_config

SAFETY_S = 60.0  # guards against a hang; the behaviour under test is far quicker
EOS = 2
NO_EOS = {str(EOS): -100}
JSON = {"Content-Type": "application/json"}


def settings_with(tmp: Path, tiny: Path, server: dict[str, Any] | None = None, queue: str = "",
                  parallel: int = 2) -> Any:
    s = write_config(tmp, {"tiny": {"source": f"file://{tiny}", "context": 4096, "parallel": parallel,
                                    "keep_alive": "forever"}}, server)
    if queue:
        cfg = tmp / "appliance.toml"
        cfg.write_text(cfg.read_text() + "[queue]\n" + queue + "\n")
        s = load_settings(cfg, tmp / "models.toml")
    return s


def is_openai_error(body: Any) -> bool:
    err = body.get("error") if isinstance(body, dict) else None
    return isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}


async def post(http: aiohttp.ClientSession, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
    async with http.post(path, json=body, **kw) as r:
        return r.status, await r.json(content_type=None)


@pytest.fixture
def daemon_settings(tmp_path: Path, tiny_models: dict[str, Path]) -> Any:
    s = settings_with(tmp_path, tiny_models["a"], {"idle_timeout": "1s", "max_connections": 8})
    pull_all(s)
    return s


async def test_cross_site_posts_and_dns_rebinding_are_refused(daemon_settings: Any) -> None:
    """Finding 8: a form POST from evil.example unloaded a model in open mode; any Host passed."""
    async with serving(daemon_settings) as d, aiohttp.ClientSession(d.url) as http:
        async with http.post("/admin/models/tiny/load", headers=JSON) as r:
            assert r.status == 200
        form = {"Origin": "https://evil.example", "Content-Type": "application/x-www-form-urlencoded"}
        async with http.post("/admin/models/tiny/unload", data="x=1", headers=form) as r:
            assert r.status == 403 and (await r.json())["error"]["code"] == "cross_site_request"
        async with http.post("/admin/models/tiny/unload", data="x=1",  # a browser's, without Origin
                             headers={"Content-Type": "text/plain", "Sec-Fetch-Site": "cross-site"}) as r:
            assert r.status == 403
        async with http.post("/admin/models/tiny/unload", data="x=1", headers={  # an allowed origin's form
                "Content-Type": "text/plain", "Origin": "http://localhost:3000"}) as r:
            assert r.status == 403
        async with http.post("/admin/models/tiny/unload", headers={**JSON, "Origin": "https://evil.example"}) as r:
            assert r.status == 403
        async with http.get("/admin/models") as r:
            assert {m["id"]: m["state"] for m in (await r.json())["data"]} == {"tiny": "loaded"}
        for path in ("/admin/models", "/metrics", "/v1/models"):
            async with http.get(path, headers={"Host": "evil.example:8000"}) as r:
                assert r.status == 421 and is_openai_error(await r.json())
        async with http.get("/v1/models", headers={"Host": f"localhost:{d.port}"}) as r:
            assert r.status == 200
        async with http.post("/admin/models/tiny/unload", headers={**JSON, "Origin": d.url}) as r:
            assert r.status == 200  # same origin


@pytest.mark.parametrize("body, param", [
    ({"prompt": "\ud800"}, None),
    ({"messages": [{"role": "user", "content": "\udfff x"}]}, None),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": ["s"] * 100_000}, "stop"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": ["x" * 5000]}, "stop"),
    ({"messages": [{"role": "user", "content": "hi"}] * 5000}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "logit_bias": {str(i): 1 for i in range(2000)}}, "logit_bias"),
    ({"messages": [{"role": "user", "content": "hi"}],
      "tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(200)]}, "tools"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {
        "name": "f", "arguments": "not json"}}]}, {"role": "user", "content": "hi"}]}, None),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {
        "name": "f", "arguments": "[" * 5000 + "]" * 5000}}]}, {"role": "user", "content": "hi"}]}, None),
    ({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "string", "pattern": "^[z-a]$"}}}}, "response_format"),
    ({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "integer", "minimum": 3, "maximum": 1}}}}, "response_format"),
    ({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required", "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "integer", "minimum": 3, "maximum": 1}}}]},
     "tools"),
    ({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required", "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"s": {"type": "string", "pattern": "^[z-a]$"}}}}}]}, "tools"),
])
async def test_finding_10_and_budgets_are_400s(daemon_settings: Any, body: dict, param: str | None) -> None:
    """Finding 10 (500s with tracebacks) and finding 5 (costs without a budget)."""
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    async with serving(daemon_settings) as d, aiohttp.ClientSession(d.url) as http:
        status, out = await post(http, path, {"model": "tiny", "max_tokens": 2, **body})
        assert status == 400 and is_openai_error(out), out
        if param is not None:
            assert out["error"]["param"] == param


async def test_deep_json_and_aiohttp_errors_in_openai_shape(daemon_settings: Any) -> None:
    async with serving(daemon_settings) as d, aiohttp.ClientSession(d.url) as http:
        deep = b'{"model": "tiny", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        async with http.post("/v1/completions", data=deep, headers=JSON) as r:
            assert r.status == 400 and is_openai_error(await r.json())
        with socket.create_connection(("127.0.0.1", d.port), timeout=SAFETY_S) as s:
            s.sendall(b"GARBAGE\x01 / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            raw = await asyncio.get_running_loop().run_in_executor(None, _read_all, s)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"400" and b"application/json" in head
        assert is_openai_error(json.loads(body))


async def test_hostile_schemas_neither_hang_nor_bloat_the_daemon(daemon_settings: Any) -> None:
    """Findings 1 and 2 through the API: the request is served and /health keeps answering."""
    async with serving(daemon_settings) as d, aiohttp.ClientSession(d.url) as http:
        for schema in ({"type": "string", "pattern": "^(a|a?a|a*){0,1000}b$"},
                       {"type": "string", "minLength": 1_000_000_000}):
            body = {"model": "tiny", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}],
                    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
            status, out = await post(http, "/v1/chat/completions", body, timeout=aiohttp.ClientTimeout(SAFETY_S))
            assert status == 200, out
            async with http.get("/health") as r:
                assert r.status == 200


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


async def test_slow_headers_and_idle_sockets_are_closed(daemon_settings: Any) -> None:
    """Finding 6: 1-byte-a-second headers and idle sockets stayed open for good."""
    async with serving(daemon_settings) as d:
        loop = asyncio.get_running_loop()
        slow = socket.create_connection(("127.0.0.1", d.port), timeout=SAFETY_S)
        slow.sendall(b"GET /health HTTP/1.1\r\nHo")  # and nothing more
        idle = socket.create_connection(("127.0.0.1", d.port), timeout=SAFETY_S)
        for s in (slow, idle):
            assert await loop.run_in_executor(None, _read_all, s) == b""  # closed by the server
            s.close()


async def test_connection_cap_refuses_with_one_503_and_health_survives(
        tmp_path: Path, tiny_models: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    s = settings_with(tmp_path, tiny_models["a"], {"max_connections": 3, "idle_timeout": "10m"})
    pull_all(s)
    async with serving(s) as d:
        loop = asyncio.get_running_loop()
        held = []
        for _ in range(3):  # each answers once, so the server has surely counted it; then idles
            h = socket.create_connection(("127.0.0.1", d.port), timeout=SAFETY_S)
            h.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert (await loop.run_in_executor(None, h.recv, 4096)).split(b" ")[1] == b"200"
            held.append(h)
        refused = []
        for _ in range(5):
            x = socket.create_connection(("127.0.0.1", d.port), timeout=SAFETY_S)
            refused.append(await loop.run_in_executor(None, _read_all, x))
            x.close()
        for raw in refused:
            head, _, body = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503") and json.loads(body)["error"]["code"] == "too_many_connections"
        assert sum("connection cap" in r.message for r in caplog.records) == 1  # one line, not one per refusal
        for h in held:
            h.close()
        async with aiohttp.ClientSession(d.url) as http:
            for _ in range(20):  # the held sockets close asynchronously; /health comes back
                try:
                    async with http.get("/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)  # a retry interval, not a synchronisation
            else:
                pytest.fail("/health never came back")


async def test_a_client_that_stops_reading_loses_its_stream_and_slots(
        tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """Finding 3: a stream whose reader stopped held its slots as long as it held the socket."""
    s = settings_with(tmp_path, tiny_models["a"], {"write_timeout": "1s"}, queue='max_wait = "10m"', parallel=1)
    pull_all(s)
    async with serving(s) as d:
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.settimeout(SAFETY_S)
        stuck.connect(("127.0.0.1", d.port))
        body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                           "max_tokens": 4000, "logprobs": True, "top_logprobs": 20, "logit_bias": NO_EOS}).encode()
        stuck.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        first = await asyncio.get_running_loop().run_in_executor(None, stuck.recv, 16)
        assert first.startswith(b"HTTP/1.1 200")  # streaming; never read again
        async with aiohttp.ClientSession(d.url) as http:
            # parallel = 1: this waits for the stuck stream's slot; served once it is cancelled
            status, out = await post(http, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 1},
                                     timeout=aiohttp.ClientTimeout(SAFETY_S * 5))
            assert status == 200, out
        stuck.close()


async def test_cancelled_embeddings_stop_holding_the_model(tiny_models: dict[str, Path]) -> None:
    """Finding 7: 20,000 inputs held the model 22.6 s after the client left."""
    path = tiny_models["b"]
    r = Runner([path], ModelConfig(source=f"file://{path}", context=64, parallel=2, embedding=True),
               model_id="emb", n_threads=1)
    try:
        inputs: list[str | list[int]] = [f"input number {i}" for i in range(2000)]
        task = asyncio.create_task(r.embed(inputs))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await r.embed(["after"])  # queued behind the cancelled work on the runner's thread
        total = sum(len(r.tokenize(str(t))) for t in inputs)
        assert r.stats.prompt_tokens_evaluated < total  # the rest was never decoded
    finally:
        r.close()


async def test_scopes_limited_admin_same_404_and_escaped_logs(
        tmp_path: Path, tiny_models: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    """Finding 9: a model-limited admin key acted on every model; forged log lines."""
    from appliance.auth import create_key

    s = write_config(tmp_path, {m: {"source": f"file://{tiny_models[m]}", "context": 128} for m in ("a", "b")})
    pull_all(s)
    token, _ = create_key(s.keys_path, "ops", scope="admin", models=["a"])
    auth = {"Authorization": f"Bearer {token}"}
    async with serving(s) as d, aiohttp.ClientSession(d.url, headers=auth) as http:
        async with http.get("/admin/models") as r:
            assert [m["id"] for m in (await r.json())["data"]] == ["a"]
        for path in ("/admin/models/b/load", "/admin/models/b/unload", "/admin/models/zz/load"):
            async with http.post(path) as r:
                assert r.status == 404 and (await r.json())["error"]["code"] == "model_not_found", path
        async with http.get("/admin/models/b") as r:
            assert r.status == 404
        async with http.post("/admin/models/a/load") as r:
            assert r.status == 200
        with caplog.at_level("INFO", logger="appliance.access"):
            async with http.get("/v1/x%0AGET%20/forged%20200%1B[31m") as r:
                assert r.status == 404
        lines = [r.getMessage() for r in caplog.records if r.name == "appliance.access"]
        assert lines and all("\n" not in ln and "\x1b" not in ln for ln in lines)


async def test_revoking_a_key_ends_its_running_stream(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """Finding 9: a stream went on for 382 events after its key was revoked."""
    from appliance.auth import create_key, revoke_key

    s = settings_with(tmp_path, tiny_models["a"])
    pull_all(s)
    token, _ = create_key(s.keys_path, "leaver")
    body = {"model": "tiny", "prompt": "hi", "stream": True, "max_tokens": 4000, "logit_bias": NO_EOS}
    async with serving(s) as d, aiohttp.ClientSession(d.url, headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.post("/v1/completions", json=body, timeout=aiohttp.ClientTimeout(SAFETY_S)) as r:
            assert r.status == 200
            events = []
            async for line in r.content:
                if not line.startswith(b"data: "):
                    continue
                events.append(line[6:].strip())
                if len(events) == 1:
                    revoke_key(s.keys_path, "leaver")
            last = json.loads(events[-1])
        assert last["error"]["code"] == "invalid_api_key"
        assert b"[DONE]" not in events and len(events) < 4000


async def test_cancelled_streams_count_their_tokens(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """Finding 9: cancelled requests were logged tokens=0+0 and reached no token metric."""
    s = settings_with(tmp_path, tiny_models["a"])
    pull_all(s)
    records: list[Any] = []
    logged = asyncio.Event()
    body = {"model": "tiny", "prompt": "hi", "stream": True, "max_tokens": 4000, "logit_bias": NO_EOS}
    async with serving(s) as d:
        d.on_request(lambda rec: (records.append(rec), logged.set()))
        async with aiohttp.ClientSession(d.url) as http:
            async with http.post("/v1/completions", json=body) as r:
                seen = 0
                async for line in r.content:
                    seen += line.startswith(b"data: ")
                    if seen == 5:
                        break  # hang up mid-stream
        await asyncio.wait_for(logged.wait(), SAFETY_S)  # the server notices the hang-up
    (rec,) = records
    assert rec.status == 499 and rec.prompt_tokens > 0 and rec.completion_tokens >= 5
