"""The HTTP layer on a real listening daemon, for everything decided before the engine:
auth, scopes, model lists, rate limits, errors, validation, limits, routing, probes, CORS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import openai
import pytest
from multidict import CIMultiDict

from appliance.api.middleware import is_page_path
from appliance.auth import create_key, revoke_key
from appliance.clock import FakeClock
from appliance.daemon import Daemon
from appliance.errors import UsageError
from test_api_support import serving, write_config

MODELS = {
    "alpha": {"source": "file:///nonexistent/alpha.gguf", "aliases": ["a1"], "parallel": 2},
    "beta": {"source": "file:///nonexistent/beta.gguf", "sha256": "b" * 64},
    "emb": {"source": "file:///nonexistent/emb.gguf", "embedding": True},
}


@pytest.fixture
def settings(tmp_path: Path):  # noqa: ANN201
    return write_config(tmp_path, MODELS, {"max_body_bytes": "1MiB", "cors_origins": ["https://app.example"]})


@pytest.fixture
def keys(settings) -> dict[str, str]:  # noqa: ANN001
    p = settings.keys_path
    return {
        "admin": create_key(p, "root", scope="admin")[0],
        "user": create_key(p, "app")[0],
        "limited": create_key(p, "lim", models=["beta"])[0],
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def daemon(settings, clock: FakeClock) -> AsyncIterator[Daemon]:  # noqa: ANN001
    """The real daemon on a free loopback port (keys may be created before or after it starts:
    it re-reads keys.toml when the file changes)."""
    async with serving(settings, clock=clock) as d:
        yield d


def _h(token: str | None = None, **extra: str) -> dict[str, str]:
    h = dict(extra)
    if token:
        h["Authorization"] = f"Bearer {token}"
    return h


async def _req(d: Daemon, method: str, path: str, **kw: Any) -> tuple[int, CIMultiDict[str], Any]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, d.url + path, **kw) as r:
            text = await r.text()
            try:
                body = json.loads(text)
            except ValueError:
                body = text
            return r.status, CIMultiDict(r.headers), body


def _err(body: Any) -> dict[str, Any]:
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


async def test_probes_are_open_and_everything_else_needs_a_key(keys, daemon) -> None:  # noqa: ANN001
    assert (await _req(daemon, "GET", "/health"))[0] == 200
    st, _, body = await _req(daemon, "GET", "/ready")
    assert st == 200 and body["status"] == "ready"
    st, _, body = await _req(daemon, "GET", "/v1/models")
    assert st == 401 and _err(body)["code"] == "invalid_api_key"
    st, _, body = await _req(daemon, "GET", "/v1/models", headers=_h("sk-appl-wrong"))
    assert st == 401 and _err(body)["type"] == "invalid_request_error"


async def test_every_route_refuses_without_a_key(keys, daemon) -> None:  # noqa: ANN001
    """Enumerates the real app's routes, so a new route cannot slip through open."""
    routes = {(r.method, r.resource.canonical) for r in daemon.app.router.routes() if r.resource is not None}
    assert ("POST", "/v1/chat/completions") in routes
    for method, canonical in sorted(routes):
        path = canonical.replace("{model:.+}", "alpha")
        for name in ("{model}", "{id}", "{name}"):
            path = path.replace(name, "alpha")
        if method == "HEAD":
            continue
        st, _, body = await _req(daemon, method, path, json={"model": "alpha"} if method == "POST" else None)
        if path in ("/health", "/ready", "/api/version"):
            assert st == 200, path
        elif is_page_path(path):  # the console's page and files: open, no secrets
            assert st in (200, 404) and method == "GET", path
        elif path.startswith("/api/"):  # Ollama's routes answer in Ollama's shape
            assert st == 401 and "API key" in body["error"], (method, path, st, body)
        else:
            assert st == 401, (method, path, st, body)
            assert _err(body)["code"] == "invalid_api_key"


async def test_models_list_only_what_the_key_may_use(keys, daemon) -> None:  # noqa: ANN001
    client = openai.AsyncOpenAI(base_url=daemon.url + "/v1", api_key=keys["user"], _strict_response_validation=True)
    ids = [m.id for m in (await client.models.list()).data]
    assert ids == ["alpha", "beta", "emb"]
    beta = await client.models.retrieve("beta")
    assert beta.owned_by == "appliance" and beta.object == "model"
    extra = beta.model_extra or {}
    assert extra["sha256"] == "b" * 64 and extra["source"] is None  # paths: admin keys only
    admin = openai.AsyncOpenAI(base_url=daemon.url + "/v1", api_key=keys["admin"], _strict_response_validation=True)
    assert (await admin.models.retrieve("beta")).model_extra["source"] == "file:///nonexistent/beta.gguf"
    assert (await client.models.retrieve("a1")).id == "alpha"  # aliases resolve

    limited = openai.AsyncOpenAI(base_url=daemon.url + "/v1", api_key=keys["limited"], _strict_response_validation=True)
    assert [m.id for m in (await limited.models.list()).data] == ["beta"]
    # not yours and missing look the same: a restricted key learns nothing beyond its list
    with pytest.raises(openai.NotFoundError) as e:
        await limited.models.retrieve("alpha")
    with pytest.raises(openai.NotFoundError) as e2:
        await limited.models.retrieve("nope")
    assert e.value.body == {**e2.value.body, "message": e.value.body["message"]}
    assert e.value.code == e2.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as e:
        await limited.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as e:
        await client.models.retrieve("nope")
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as e:
        await client.completions.create(model="nope", prompt="x")
    assert e.value.code == "model_not_found" and e.value.body["param"] == "model"


async def test_revoked_key_fails_on_next_request_without_restart(settings, keys, daemon) -> None:  # noqa: ANN001
    assert (await _req(daemon, "GET", "/v1/models", headers=_h(keys["user"])))[0] == 200
    revoke_key(settings.keys_path, "app")
    st, _, body = await _req(daemon, "GET", "/v1/models", headers=_h(keys["user"]))
    assert st == 401 and _err(body)["code"] == "invalid_api_key"
    assert (await _req(daemon, "GET", "/v1/models", headers=_h(keys["admin"])))[0] == 200
    new, _ = create_key(settings.keys_path, "late")
    assert (await _req(daemon, "GET", "/v1/models", headers=_h(new)))[0] == 200


async def test_admin_routes_need_admin_scope(keys, daemon) -> None:  # noqa: ANN001
    for path in ("/admin/models", "/metrics"):
        st, _, body = await _req(daemon, "GET", path, headers=_h(keys["user"]))
        assert st == 403 and _err(body)["code"] == "insufficient_scope", path
        assert _err(body)["type"] == "permission_error"
        st, _, _ = await _req(daemon, "GET", path, headers=_h(keys["admin"]))
        assert st != 403


async def test_errors_in_our_shape(keys, daemon) -> None:  # noqa: ANN001
    h = _h(keys["user"])
    st, hdr, body = await _req(daemon, "GET", "/v1/nothing", headers=h)
    assert st == 404 and _err(body)["code"] == "not_found" and hdr["x-request-id"]
    st, _, body = await _req(daemon, "GET", "/v1/chat/completions", headers=h)
    assert st == 405 and _err(body)["code"] == "method_not_allowed"
    st, _, body = await _req(daemon, "POST", "/v1/chat/completions", headers=h, data=b"{not json",
                             skip_auto_headers=["Content-Type"])
    assert st == 400 and _err(body)["code"] == "invalid_json"
    st, _, body = await _req(daemon, "POST", "/v1/chat/completions", headers={**h, "Content-Type": "application/json"},
                             data=b"{not json")
    assert st == 400 and _err(body)["code"] == "invalid_json"
    # other content types: test_api_lenient.py
    st, _, body = await _req(daemon, "POST", "/v1/chat/completions", headers=h, json=[1, 2])
    assert st == 400 and _err(body)["code"] == "invalid_value"


async def test_body_over_the_limit_is_413_in_our_shape(keys, daemon) -> None:  # noqa: ANN001
    big = {"model": "alpha", "prompt": "x" * (1536 * 1024)}
    st, _, body = await _req(daemon, "POST", "/v1/completions", headers=_h(keys["user"]), json=big)
    assert st == 413 and _err(body)["code"] == "request_too_large"

    async def chunks():  # noqa: ANN202 - no Content-Length: aiohttp's own limit must answer the same
        payload = json.dumps(big).encode()
        for i in range(0, len(payload), 65536):
            yield payload[i:i + 65536]

    st, _, body = await _req(daemon, "POST", "/v1/completions",
                             headers={**_h(keys["user"]), "Content-Type": "application/json"}, data=chunks())
    assert st == 413 and _err(body)["code"] == "request_too_large"


BAD_CHAT: list[tuple[dict[str, Any], str]] = [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"n": 0}, "n"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 500}}, "logit_bias.5"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"stop": 5}, "stop"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"n": 3}, "n"),  # alpha has parallel = 2
    ({"model": None}, "model"),
]


@pytest.mark.parametrize("patch,param", BAD_CHAT, ids=[p for _, p in BAD_CHAT])
async def test_each_invalid_chat_parameter_is_400_naming_it(keys, patch, param, daemon) -> None:  # noqa: ANN001
    body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], **patch}
    st, _, resp = await _req(daemon, "POST", "/v1/chat/completions", headers=_h(keys["user"]), json=body)
    assert st == 400, resp
    err = _err(resp)
    assert err["code"] == "invalid_value" and err["param"] == param, err


async def test_invalid_completion_and_embedding_parameters(keys, daemon) -> None:  # noqa: ANN001
    h = _h(keys["user"])
    cases = [
        ("/v1/completions", {"model": "alpha", "prompt": []}, "prompt"),
        ("/v1/completions", {"model": "alpha", "prompt": "x", "logprobs": 6}, "logprobs"),
        ("/v1/completions", {"model": "alpha", "prompt": "x", "n": 5}, "n"),
        ("/v1/embeddings", {"model": "emb", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ("/v1/embeddings", {"model": "alpha", "input": "x"}, "model"),  # not an embedding model
    ]
    for path, body, param in cases:
        st, _, resp = await _req(daemon, "POST", path, headers=h, json=body)
        assert st == 400 and _err(resp)["param"] == param, (path, body, resp)
    # unknown extra fields are ignored, not rejected (validation passes, model lookup runs)
    st, _, resp = await _req(daemon, "POST", "/v1/completions", headers=h,
                             json={"model": "nope", "prompt": "x", "vendor_extra": {"a": 1}})
    assert st == 404 and _err(resp)["code"] == "model_not_found"


async def test_draining_answers_503_with_connection_close(keys, daemon) -> None:  # noqa: ANN001
    daemon.state.draining = True
    st, hdr, body = await _req(daemon, "GET", "/v1/models", headers=_h(keys["user"]))
    assert st == 503 and _err(body)["code"] == "draining"
    assert hdr.get("Connection", "").lower() == "close" and "Retry-After" in hdr
    st, _, body = await _req(daemon, "GET", "/ready")
    assert st == 503 and _err(body)["code"] == "draining"
    assert (await _req(daemon, "GET", "/health"))[0] == 200


async def test_not_ready_answers_503_with_retry_after(keys, daemon) -> None:  # noqa: ANN001
    """The listener opens before pinned models load: until ready, only probes are served."""
    daemon.state.ready = False
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/admin/models")):
        st, hdr, body = await _req(daemon, method, path, headers=_h(keys["admin"]), json={})
        assert st == 503 and _err(body)["code"] == "not_ready", (path, body)
        assert _err(body)["type"] == "server_error" and int(hdr["Retry-After"]) >= 1
    st, _, body = await _req(daemon, "GET", "/ready")
    assert st == 503 and _err(body)["code"] == "not_ready"
    assert (await _req(daemon, "GET", "/health"))[0] == 200
    daemon.state.ready = True
    assert (await _req(daemon, "GET", "/v1/models", headers=_h(keys["user"])))[0] == 200


async def test_request_ids_and_hooks(keys, daemon) -> None:  # noqa: ANN001
    seen = []
    daemon.on_request(seen.append)
    st, hdr, _ = await _req(daemon, "GET", "/v1/models", headers=_h(keys["user"], **{"x-request-id": "abc-123"}))
    assert st == 200 and hdr["x-request-id"] == "abc-123"
    st, hdr, _ = await _req(daemon, "GET", "/v1/models/nope", headers=_h(keys["user"]))
    assert hdr["x-request-id"].startswith("req_")
    assert [(r.request_id, r.status, r.key_name) for r in seen[:1]] == [("abc-123", 200, "app")]
    assert seen[1].status == 404 and seen[1].error_code == "model_not_found"


async def test_cors_preflight_and_headers(keys, daemon) -> None:  # noqa: ANN001
    st, hdr, _ = await _req(daemon, "OPTIONS", "/v1/chat/completions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert st == 204 and hdr["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in hdr["Access-Control-Allow-Methods"] and "authorization" in hdr["Access-Control-Allow-Headers"]
    st, hdr, _ = await _req(daemon, "GET", "/v1/models", headers=_h(keys["user"], Origin="https://app.example"))
    assert st == 200 and hdr["Access-Control-Allow-Origin"] == "https://app.example"
    st, hdr, _ = await _req(daemon, "GET", "/v1/models", headers=_h(keys["user"], Origin="https://evil.example"))
    assert st == 200 and "Access-Control-Allow-Origin" not in hdr
    st, hdr, _ = await _req(daemon, "OPTIONS", "/v1/models", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert st in (401, 405) and "Access-Control-Allow-Origin" not in hdr


async def test_open_on_loopback_without_keys_refused_elsewhere(settings, daemon) -> None:  # noqa: ANN001
    assert (await _req(daemon, "GET", "/v1/models"))[0] == 200
    with pytest.raises(UsageError, match="keys create admin --scope admin"):
        Daemon(settings, host="0.0.0.0", port=0).check()
