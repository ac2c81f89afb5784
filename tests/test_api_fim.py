"""Fill-in-the-middle (`suffix` on /v1/completions, llama-server's /infill), /tokenize and
/detokenize, and /v1/models/{id}'s capabilities, on real llama.cpp: a tiny model whose
vocabulary carries FIM tokens (tests/ggufmaker.py, Shape.fim) and one without."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from ggufmaker import FIM_TOKENS, Shape, make_gguf
from test_api_support import serving, write_config

NO_EOS = {"2": -100}


@pytest.fixture(scope="module")
def fim_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_gguf(tmp_path_factory.mktemp("fim") / "coder.gguf", Shape(name="tiny-fim", fim=True))


@pytest.fixture
def settings(tmp_path: Path, fim_gguf: Path, tiny_gguf: Path):  # noqa: ANN201
    s = write_config(tmp_path, {
        "coder": {"source": f"file://{fim_gguf}", "context": 128, "parallel": 1, "keep_alive": "forever"},
        "plain": {"source": f"file://{tiny_gguf}", "context": 128, "parallel": 1, "keep_alive": "forever"},
        "absent": {"source": "file:///nonexistent/x.gguf"},
    })
    pull_all_but_absent(s)
    return s


def pull_all_but_absent(settings: Any) -> None:
    from appliance.store import Store, pull_model

    store = Store.open(settings.config.store.path)
    for mid, cfg in settings.catalog.models.items():
        if mid != "absent":
            pull_model(store, mid, cfg, progress=False)


async def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=body) as r:
            return r.status, await r.json()


async def test_fim_suffix_infill_and_tokenizer(settings) -> None:  # noqa: ANN001
    async with serving(settings) as d:
        url = d.url
        # the prompt the model sees: PRE prefix SUF suffix MID, checked through /tokenize's pieces
        st, pieces = await _post(url + "/tokenize", {"model": "coder", "content": "".join(
            [FIM_TOKENS[0], "def f(", FIM_TOKENS[1], "):", FIM_TOKENS[2]]), "with_pieces": True})
        assert st == 200
        ids = [p["id"] for p in pieces["tokens"]]
        assert ids[0] == 31997 and 31998 in ids and ids[-1] == 31999
        st, detok = await _post(url + "/detokenize", {"model": "coder", "tokens": ids[1:-1]})
        assert st == 200 and detok["content"].startswith("def f(")
        st, plain = await _post(url + "/tokenize", {"model": "coder", "content": "def f("})
        assert st == 200 and plain["tokens"] == ids[1:ids.index(31998)]
        st, err = await _post(url + "/detokenize", {"model": "coder", "tokens": [10 ** 6]})
        assert st == 400 and err["error"]["param"] == "tokens"

        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0) as c:
            r = await c.completions.create(model="coder", prompt="def f(", suffix="):", max_tokens=4,
                                           temperature=0, logit_bias=NO_EOS)
            # the prompt is BOS + PRE + prefix + SUF + suffix + MID: counted as the FIM prompt
            assert r.usage.prompt_tokens == 1 + len(ids) and r.usage.completion_tokens == 4
            no_fim = await c.completions.create(model="coder", prompt="def f(", max_tokens=4, temperature=0,
                                                logit_bias=NO_EOS)
            assert no_fim.usage.prompt_tokens == 1 + len(plain["tokens"])
            with pytest.raises(openai.BadRequestError) as e:
                await c.completions.create(model="plain", prompt="def f(", suffix="):", max_tokens=4)
            assert "fill-in-the-middle" in e.value.message and e.value.body["param"] == "suffix"

        st, out = await _post(url + "/infill", {"model": "coder", "input_prefix": "def f(", "input_suffix": "):",
                                                 "n_predict": 4, "temperature": 0, "logit_bias": NO_EOS})
        assert st == 200 and out["stop"] is True and out["tokens_predicted"] == 4
        assert out["content"] == r.choices[0].text and out["stop_type"] == "limit"
        st, err = await _post(url + "/infill", {"model": "plain", "input_prefix": "a", "input_suffix": "b"})
        assert st == 400 and err["error"]["param"] == "input_suffix"
        # streamed: llama-server's events, pieces of content, the last with stop: true, no [DONE]
        async with aiohttp.ClientSession() as s:
            async with s.post(url + "/infill", json={"model": "coder", "input_prefix": "def f(", "input_suffix": "):",
                                                     "n_predict": 4, "temperature": 0, "logit_bias": NO_EOS,
                                                     "stream": True}) as resp:
                raw = (await resp.read()).decode()
        events = [json.loads(line[6:]) for line in raw.split("\n\n") if line.startswith("data: ")]
        assert "[DONE]" not in raw and events[-1]["stop"] is True
        assert all(not e["stop"] for e in events[:-1])
        assert "".join(e["content"] for e in events) == out["content"]


async def test_model_capabilities(settings) -> None:  # noqa: ANN001
    async with serving(settings) as d:
        async with aiohttp.ClientSession() as s:
            cards = {}
            for mid in ("coder", "plain", "absent"):
                async with s.get(d.url + f"/v1/models/{mid}") as r:
                    assert r.status == 200
                    cards[mid] = await r.json()
    assert cards["coder"]["capabilities"] == {"chat": True, "completion": True, "tools": False, "reasoning": False,
                                              "embeddings": False, "vision": False, "fim": True}
    assert cards["coder"]["architecture"] == "llama" and cards["coder"]["context_train"] == 4096
    assert cards["coder"]["context_length"] == 128
    assert cards["plain"]["capabilities"]["fim"] is False
    assert cards["absent"]["capabilities"]["fim"] is False and cards["absent"]["architecture"] is None
