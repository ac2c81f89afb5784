"""What browsers and lenient clients need from the HTTP layer (issue 18): CORS preflights on
every route with the default localhost origins, `null` as "default", JSON bodies without a
JSON content type (but not from a cross-site page), and `rpm` spent only by admitted
inference requests. A real daemon on a loopback port; the models need not exist."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from appliance.api.origins import origin_allowed
from appliance.auth import create_key
from appliance.clock import FakeClock
from appliance.daemon import Daemon
from test_api_support import serving, write_config

MODELS = {
    "alpha": {"source": "file:///nonexistent/alpha.gguf"},
    "beta": {"source": "file:///nonexistent/beta.gguf"},
    "emb": {"source": "file:///nonexistent/emb.gguf", "embedding": True},
}


async def _req(d: Daemon, method: str, path: str, **kw: Any) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, d.url + path, **kw) as r:
            text = await r.text()
            try:
                return r.status, r.headers.copy(), json.loads(text)
            except ValueError:
                return r.status, r.headers.copy(), text


@pytest.fixture
async def open_daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    """Default appliance.toml (no cors_origins set), no keys: open on loopback."""
    async with serving(write_config(tmp_path, MODELS)) as d:
        yield d


def test_origin_patterns() -> None:
    default = ["http://localhost:*", "http://127.0.0.1:*"]
    assert origin_allowed("http://localhost:3000", default)
    assert origin_allowed("http://localhost", default)
    assert origin_allowed("http://127.0.0.1:5173", default)
    assert not origin_allowed("http://localhost.evil.example:3000", default)
    assert not origin_allowed("https://localhost:3000", default)  # another scheme is another origin
    assert not origin_allowed("http://localhost:3000x", default)
    assert not origin_allowed("null", ["*"]) and not origin_allowed(None, ["*"])


async def test_default_preflight_from_localhost_on_every_route(open_daemon: Daemon) -> None:
    pre = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type"}
    for path in ("/v1/chat/completions", "/v1/models", "/api/chat", "/v1/responses", "/infill", "/no/such/route"):
        st, hdr, _ = await _req(open_daemon, "OPTIONS", path, headers=pre)
        assert st == 204, path
        assert hdr["Access-Control-Allow-Origin"] == "http://localhost:3000"
        assert "POST" in hdr["Access-Control-Allow-Methods"]
        assert hdr["Access-Control-Allow-Headers"] == "authorization, content-type"
        assert "Access-Control-Allow-Credentials" not in hdr
    st, hdr, _ = await _req(open_daemon, "OPTIONS", "/v1/models",
                            headers={**pre, "Origin": "http://evil.example"})
    assert st != 204 and "Access-Control-Allow-Origin" not in hdr


async def test_star_origin_never_allows_credentials(tmp_path: Path) -> None:
    async with serving(write_config(tmp_path, MODELS, {"cors_origins": ["*"]})) as d:
        st, hdr, _ = await _req(d, "OPTIONS", "/v1/models", headers={
            "Origin": "https://anywhere.example", "Access-Control-Request-Method": "GET"})
        assert st == 204
        st, hdr, _ = await _req(d, "GET", "/v1/models", headers={"Origin": "https://anywhere.example"})
        assert st == 200 and hdr["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in hdr


async def test_null_means_default(open_daemon: Daemon) -> None:
    """Validation passes (the model lookup runs and answers 404) with nulls everywhere."""
    cases = [
        ("/v1/completions", {"model": "nope", "prompt": "x", "n": None, "logprobs": None, "stream": None,
                             "echo": None, "max_tokens": None, "suffix": None}),
        ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x", "name": None}],
                                  "n": None, "logprobs": None, "stream": None, "tools": None, "stop": None}),
        ("/v1/embeddings", {"model": "nope", "input": "x", "encoding_format": None}),
    ]
    for path, body in cases:
        st, _, resp = await _req(open_daemon, "POST", path, json=body)
        assert st == 404 and resp["error"]["code"] == "model_not_found", (path, resp)
    st, _, resp = await _req(open_daemon, "POST", "/v1/completions", json={"model": None, "prompt": "x"})
    assert st == 400 and resp["error"]["param"] == "model"  # a required parameter stays required


async def test_json_without_json_content_type(tmp_path: Path) -> None:
    settings = write_config(tmp_path, MODELS)
    body = json.dumps({"model": "nope", "prompt": "x"})
    async with serving(settings) as d:
        # curl -d (form content type) and scripts without a content type: no Origin, accepted
        for ctype in ("application/x-www-form-urlencoded", "text/plain"):
            st, _, resp = await _req(d, "POST", "/v1/completions", data=body, headers={"Content-Type": ctype})
            assert st == 404 and resp["error"]["code"] == "model_not_found", ctype
        # a page posting text/plain (no preflight needed), even from an allowed origin: refused
        # by the browser guard (api/browser.py, issue 13)
        for headers in ({"Origin": "https://evil.example"}, {"Origin": "http://localhost:3000"},
                        {"Sec-Fetch-Site": "cross-site"}):
            st, _, resp = await _req(d, "POST", "/v1/completions", data=body,
                                     headers={"Content-Type": "text/plain", **headers})
            assert st == 403 and resp["error"]["code"] == "cross_site_request", headers
        # ... but JSON from an allowed origin is a browser front end's request
        st, _, resp = await _req(d, "POST", "/v1/completions", json={"model": "nope", "prompt": "x"},
                                 headers={"Origin": "http://localhost:3000"})
        assert st == 404 and resp["error"]["code"] == "model_not_found"
    token, _ = create_key(settings.keys_path, "k")
    async with serving(settings) as d:
        # with an Authorization header no page could have sent it without a preflight
        st, _, resp = await _req(d, "POST", "/v1/completions", data=body, headers={
            "Content-Type": "text/plain", "Authorization": f"Bearer {token}"})
        assert st == 404 and resp["error"]["code"] == "model_not_found"


async def test_rpm_counts_only_admitted_inference(tmp_path: Path) -> None:
    settings = write_config(tmp_path, MODELS)
    token, _ = create_key(settings.keys_path, "slow", models=["alpha"], rpm=2)
    clock = FakeClock()
    h = {"Authorization": f"Bearer {token}"}
    async with serving(settings, clock=clock) as d:
        for _ in range(3):  # listing models and refused requests (a model not on its list, bad bodies) are free
            assert (await _req(d, "GET", "/v1/models", headers=h))[0] == 200
            st, _, resp = await _req(d, "POST", "/v1/embeddings", headers=h, json={"model": "beta", "input": "x"})
            assert st == 404 and resp["error"]["code"] == "model_not_found"  # another key's model
            st, _, resp = await _req(d, "POST", "/v1/completions", headers=h, json={"model": "alpha", "prompt": []})
            assert st == 400
        for _ in range(2):  # admitted (its file is missing, so it fails later: it still counts)
            st, _, resp = await _req(d, "POST", "/v1/completions", headers=h, json={"model": "alpha", "prompt": "x"})
            assert st != 429, resp
        st, hdr, resp = await _req(d, "POST", "/v1/completions", headers=h, json={"model": "alpha", "prompt": "x"})
        assert st == 429 and resp["error"]["code"] == "rate_limit_exceeded" and hdr["Retry-After"] == "30"
        clock.advance(30)
        st, _, resp = await _req(d, "POST", "/v1/completions", headers=h, json={"model": "alpha", "prompt": "x"})
        assert st != 429


@pytest.mark.parametrize("field,value", [("stream", "true"), ("max_tokens", "16"), ("max_tokens", True),
                                         ("n", 1.0), ("stream_options", {"include_usage": "yes"}),
                                         ("temperature", "0.7")])
async def test_wrong_types_are_refused_not_coerced(open_daemon: Daemon, field: str, value: Any) -> None:
    """OpenAI answers 400 for a string where a boolean or number belongs; pydantic's lax mode
    would have taken `"true"` as true and `"16"` as 16. The error names the field."""
    body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], field: value}
    if field == "stream_options":
        body["stream"] = True
    status, _, err = await _req(open_daemon, "POST", "/v1/chat/completions", json=body)
    assert status == 400, (status, err)
    assert err["error"]["type"] == "invalid_request_error" and field in json.dumps(err["error"]), err


async def test_an_integer_is_still_a_number(open_daemon: Daemon) -> None:
    """`"temperature": 1` is valid (the model does not exist here: 404, not a 400 on the type)."""
    body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "temperature": 1, "top_p": 1}
    status, _, err = await _req(open_daemon, "POST", "/v1/chat/completions", json=body)
    assert status != 400, err


async def test_nan_is_refused_as_not_a_finite_number(open_daemon: Daemon) -> None:
    """Python's json reads NaN: the error must say what is wrong with it, not "must be ≤ 2"."""
    raw = '{"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    status, _, err = await _req(open_daemon, "POST", "/v1/chat/completions", data=raw,
                                headers={"Content-Type": "application/json"})
    assert status == 400 and "finite" in err["error"]["message"] and "temperature" in json.dumps(err["error"]), err
