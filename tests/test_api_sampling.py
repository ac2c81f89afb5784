"""llama.cpp's sampling extensions on the OpenAI routes and the per-model defaults of
models.toml, end to end over HTTP on real llama.cpp (a tiny random-weight GGUF)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance.auth import create_key
from test_api_support import pull_all, serving, write_config

NO_EOS = {"2": -100}  # the llama-spm vocab's </s>: random weights keep generating


@pytest.fixture
def env(tmp_path: Path, tiny_models: dict[str, Path]):  # noqa: ANN201
    base = {"source": f"file://{tiny_models['a']}", "context": 128, "parallel": 1, "keep_alive": "forever"}
    settings = write_config(tmp_path, {
        "plain": base,
        # the model's own defaults: greedy unless a request asks otherwise
        "cold": {**base, "temperature": 0, "top_k": 1, "min_p": 0.1, "repeat_penalty": 1},
    })
    store = pull_all(settings)
    token, _ = create_key(settings.keys_path, "tester")
    return settings, store, token


async def _complete(http: aiohttp.ClientSession, url: str, token: str, **body: Any) -> tuple[int, dict[str, Any]]:
    body = {"prompt": "Once upon a time", "max_tokens": 12, "logit_bias": NO_EOS, **body}
    async with http.post(url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json()


async def test_extensions_and_model_defaults(env) -> None:  # noqa: ANN001
    settings, store, token = env
    async with serving(settings, store=store) as d, aiohttp.ClientSession() as http:
        _, greedy = await _complete(http, d.url, token, model="plain", temperature=0)
        text = greedy["choices"][0]["text"]
        # top_k = 1 is greedy whatever the temperature (refused before: the field was ignored)
        _, top1 = await _complete(http, d.url, token, model="plain", temperature=2.0, top_k=1, seed=3)
        assert top1["choices"][0]["text"] == text
        # every extension accepted; null means the default
        status, _ = await _complete(http, d.url, token, model="plain", temperature=0.8, top_k=40, min_p=0.05,
                                    typical_p=0.9, repeat_penalty=1.1, repeat_last_n=-1, seed=1)
        assert status == 200
        status, _ = await _complete(http, d.url, token, model="plain", top_k=None, min_p=None, typical_p=None,
                                    repeat_penalty=None, repeat_last_n=None)
        assert status == 200
        # "cold" defaults to temperature 0 / top_k 1: a request that leaves them out is greedy
        _, cold = await _complete(http, d.url, token, model="cold", seed=9)
        assert cold["choices"][0]["text"] == text
        _, cold_null = await _complete(http, d.url, token, model="cold", temperature=None, seed=9)
        assert cold_null["choices"][0]["text"] == text
        # a request's own value wins over the model's default
        _, hot = await _complete(http, d.url, token, model="cold", temperature=2.0, top_k=0, min_p=0, seed=5,
                                 max_tokens=24)
        assert hot["choices"][0]["text"] != text


@pytest.mark.parametrize("field,value", [("top_k", -1), ("min_p", 1.5), ("typical_p", 0), ("repeat_penalty", 0),
                                         ("repeat_last_n", -2), ("top_k", "many")])
async def test_bad_extension_values_are_400_naming_the_field(env, field: str, value: Any) -> None:  # noqa: ANN001
    settings, store, token = env
    async with serving(settings, store=store) as d, aiohttp.ClientSession() as http:
        status, body = await _complete(http, d.url, token, model="plain", **{field: value})
        assert status == 400
        assert body["error"]["param"] == field and body["error"]["code"] == "invalid_value"
