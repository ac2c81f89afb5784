"""A client that hangs up mid-stream (issue 14): logged and counted as 499, not 500
internal_error, and its slot is freed. Real daemon in process, real socket, real llama.cpp."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from pathlib import Path

import pytest

from appliance.api.state import RequestRecord
from test_api_support import pull_all, serving, write_config


async def test_client_reset_mid_stream_is_a_499(tmp_path: Path, tiny_gguf: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = write_config(tmp_path, {"m": {"source": f"file://{tiny_gguf}", "context": 4096, "parallel": 1}})
    store = pull_all(settings)
    records: list[RequestRecord] = []
    done = asyncio.Event()

    def hook(r: RequestRecord) -> None:
        records.append(r)
        if r.path == "/v1/completions":
            done.set()

    async with serving(settings, store=store) as d:
        d.on_request(hook)
        host, port = d.url.removeprefix("http://").split(":")
        body = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 3000, "stream": True,
                           "logit_bias": {"2": -100}, "temperature": 0}).encode()
        loop = asyncio.get_running_loop()
        s = socket.create_connection((host, int(port)))
        s.setblocking(False)
        await loop.sock_sendall(s, b"POST /v1/completions HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        got = b""
        while b"data: " not in got:
            got += await loop.sock_recv(s, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        s.close()
        with caplog.at_level(logging.WARNING):
            await asyncio.wait_for(done.wait(), 120)
    (rec,) = [r for r in records if r.path == "/v1/completions"]
    assert rec.status == 499, rec
    assert not [r for r in caplog.records if "internal_error" in r.getMessage() or "unhandled error" in r.getMessage()]


async def test_write_to_a_reset_connection_is_a_499_not_an_internal_error(
    aiohttp_client: object, caplog: pytest.LogCaptureFixture
) -> None:
    """The race the test above rarely hits: the reset arrives while the handler writes (aiohttp
    raises ClientConnectionResetError from the write). Real aiohttp app and middlewares."""
    import aiohttp
    from aiohttp import web

    from appliance.api.middleware import errors, request_context
    from appliance.api.state import STATE_KEY, AppState

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"data: x\n\n")
        raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")

    app = web.Application(middlewares=[request_context, errors])
    state = AppState()
    records: list[RequestRecord] = []
    state.on_request.append(records.append)
    app[STATE_KEY] = state
    app.router.add_get("/s", handler)
    client = await aiohttp_client(app)  # type: ignore[operator]
    with caplog.at_level(logging.WARNING):
        try:
            async with client.get("/s") as r:
                await r.read()
        except aiohttp.ClientError:
            pass  # the server may cut the half-sent body
    assert [r.status for r in records] == [499]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "appliance" in r.name]


async def test_stream_still_running_at_the_drain_timeout_gets_an_error_event_and_a_proper_end(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    from appliance.clock import FakeClock
    from appliance.service.drain import drain
    from appliance.service.notify import Notifier

    settings = write_config(tmp_path, {"m": {"source": f"file://{tiny_gguf}", "context": 4096, "parallel": 1}})
    store = pull_all(settings)
    async with serving(settings, store=store) as d:
        host, port = d.url.removeprefix("http://").split(":")
        body = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 3000, "stream": True,
                           "logit_bias": {"2": -100}, "temperature": 0}).encode()
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        got = b""
        while b"data: " not in got:
            got += await reader.read(4096)
        # a drain whose timeout has passed at once (fake clock): the stream is still running
        assert await drain(d.state, Notifier({}), FakeClock(), 0.0) is False
        while not got.endswith(b"0\r\n\r\n"):  # the chunked body's proper end
            chunk = await asyncio.wait_for(reader.read(65536), 60)
            assert chunk, "connection closed before the body ended"
            got += chunk
        writer.close()
    events = [ln for ln in got.split(b"\r\n") if ln.startswith(b"data: ")]
    last = json.loads(events[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "draining" and "drain_timeout" in last["error"]["message"]
    assert b"[DONE]" not in got


async def test_chat_template_rendering_runs_off_the_event_loop(
    tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rendering (Jinja, tool formats, JSON schema -> grammar) is CPU work: never on the loop."""
    import aiohttp

    from appliance.engine import chat as engine_chat

    on_loop: list[bool] = []
    real = engine_chat.render_chat

    def spy(*a, **k):  # type: ignore[no-untyped-def]
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(*a, **k)

    monkeypatch.setattr(engine_chat, "render_chat", spy)
    settings = write_config(tmp_path, {"m": {"source": f"file://{tiny_gguf}", "context": 256, "parallel": 1}})
    store = pull_all(settings)
    async with serving(settings, store=store) as d, aiohttp.ClientSession(d.url) as http:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                "response_format": {"type": "json_object"}}
        async with http.post("/v1/chat/completions", json=body) as r:
            assert r.status == 200, await r.text()
    assert on_loop == [False]
