"""Ollama's API (/api/*) on a real daemon and real llama.cpp (tiny random-weight GGUFs), with
the official `ollama` Python client as the client: list, show, ps, chat and generate
(streamed and not), embed, pull; keys as Bearer tokens with the same scopes and model lists."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import ollama
import pytest

from appliance.api.ollama.models import parameter_size
from appliance.auth import create_key
from appliance.store.ggufinfo import read_gguf_info
from test_api_support import pull_all, serving, write_config



@pytest.fixture
def env(tmp_path: Path, tiny_models: dict[str, Path]):  # noqa: ANN201
    settings = write_config(tmp_path, {
        "tiny": {"source": f"file://{tiny_models['a']}", "context": 256, "parallel": 2, "keep_alive": "10m"},
        "emb": {"source": f"file://{tiny_models['b']}", "context": 64, "parallel": 2, "embedding": True},
    })
    store = pull_all(settings)
    keys = {"user": create_key(settings.keys_path, "user")[0],
            "admin": create_key(settings.keys_path, "root", scope="admin")[0],
            "emb-only": create_key(settings.keys_path, "embonly", models=["emb"])[0]}
    return settings, store, keys


@contextlib.asynccontextmanager
async def client(env, who: str = "user") -> AsyncIterator[tuple[Any, ollama.AsyncClient]]:  # noqa: ANN001
    settings, store, keys = env
    async with serving(settings, store=store) as d:
        yield d, ollama.AsyncClient(host=d.url, headers={"Authorization": f"Bearer {keys[who]}"})


def _opts(**kw: Any) -> dict[str, Any]:
    return {"temperature": 0, "seed": 1, **kw}


def test_parameter_size_as_ollama_prints_it() -> None:
    assert [parameter_size(n) for n in (268_098_176, 8_030_261_248, 7_000_000_000, 1_000_000, 16_384, 999)] == \
        ["268.10M", "8.0B", "7B", "1M", "16K", "999"]


async def test_list_show_ps_version(env) -> None:  # noqa: ANN001
    async with client(env) as (d, c):
        listed = await c.list()
        assert sorted(m.model for m in listed.models) == ["emb", "tiny"]
        tiny = next(m for m in listed.models if m.model == "tiny")
        assert tiny.size == Path(env[0].catalog.models["tiny"].source[7:]).stat().st_size
        assert len(tiny.digest) == 64 and tiny.details.format == "gguf" and tiny.details.family == "llama"
        # Ollama's figures from the header (Open WebUI and `ollama list` show them): the tensor
        # elements as Ollama prints them, the file type's name
        info = read_gguf_info(env[0].catalog.models["tiny"].source[7:])
        assert tiny.details.parameter_size == parameter_size(info.parameters) != ""
        assert tiny.details.quantization_level == "F32"
        shown = await c.show("tiny")
        assert shown.details.quantization_level == "F32" and shown.details.parameter_size == tiny.details.parameter_size
        assert shown.modelinfo["general.parameter_count"] == info.parameters  # `ollama show` prints it
        assert "completion" in shown.capabilities and "embedding" not in shown.capabilities
        assert shown.modelinfo["llama.context_length"] == 4096 and shown.details.family == "llama"
        assert (await c.show("emb:latest")).capabilities == ["embedding"]
        assert (await c.ps()).models == []  # nothing loaded yet
        await c.generate(model="tiny", prompt="hi", options=_opts(num_predict=1))
        ps = await c.ps()
        assert [m.model for m in ps.models] == ["tiny"] and ps.models[0].context_length == 256
        assert ps.models[0].size > 0 and ps.models[0].expires_at is not None
        assert ps.models[0].details.quantization_level == "F32"
        async with aiohttp.ClientSession() as s:
            async with s.get(d.url + "/api/version") as r:
                assert r.status == 200 and (await r.json())["version"]
    async with client(env, "emb-only") as (_, c):  # a key's model list applies here too
        assert [m.model for m in (await c.list()).models] == ["emb"]
        with pytest.raises(ollama.ResponseError) as e:
            await c.show("tiny")
        assert e.value.status_code == 404 and "does not exist" in e.value.error  # Ollama's {"error": "..."}


async def test_chat_streamed_and_not(env) -> None:  # noqa: ANN001
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    async with client(env) as (_, c):
        whole = await c.chat(model="tiny:latest", messages=msgs, options=_opts(num_predict=6), stream=False)
        assert whole.model == "tiny"  # Ollama's default tag names the catalog's model
        assert whole.done and whole.done_reason == "length" and whole.message.role == "assistant"
        assert whole.eval_count == 6 and whole.prompt_eval_count > 0 and whole.total_duration > 0
        # clients divide by these (`ollama run --verbose`, Open WebUI's tokens/s): never 0
        assert whole.prompt_eval_duration > 0 and whole.eval_duration > 0
        parts = [p async for p in await c.chat(model="tiny", messages=msgs, options=_opts(num_predict=6), stream=True)]
        assert all(not p.done for p in parts[:-1]) and parts[-1].done and parts[-1].done_reason == "length"
        assert "".join(p.message.content for p in parts) == whole.message.content
        assert parts[-1].eval_count == 6 and parts[-1].prompt_eval_duration > 0 and parts[-1].eval_duration > 0
        # options reach the sampler: top_k 1 is greedy too, so the text is the same
        biased = await c.chat(model="tiny", messages=msgs, options=_opts(num_predict=3, top_k=1, repeat_penalty=1.0))
        assert biased.message.content == whole.message.content[:len(biased.message.content)]
        # a tool round trip renders (Ollama's calls carry no ids; results name the tool)
        tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
        history = msgs + [{"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": '{"temp": 21}', "tool_name": "get_weather"}]
        r = await c.chat(model="tiny", messages=history, tools=tools, options=_opts(num_predict=3), stream=False)
        assert r.done and r.message.role == "assistant"
        # format: a JSON schema is enforced by grammar
        schema = {"type": "object", "properties": {"a": {"enum": ["yes", "no"]}}, "required": ["a"],
                  "additionalProperties": False}
        r = await c.chat(model="tiny", messages=msgs, format=schema, options=_opts(num_predict=120))
        assert r.done_reason == "stop" and json.loads(r.message.content)["a"] in ("yes", "no")
        r = await c.chat(model="tiny", messages=msgs, format="json", options=_opts(num_predict=8))
        assert r.message.content.startswith("{")  # any JSON object (random weights may not finish one)
        with pytest.raises(ollama.ResponseError) as e:
            await c.chat(model="tiny", messages=msgs, options={"temperature": -1})
        assert e.value.status_code == 400 and "temperature" in e.value.error
        with pytest.raises(ollama.ResponseError) as e:
            await c.chat(model="nope", messages=msgs)
        assert e.value.status_code == 404


async def test_generate_raw_context_suffix_and_load(env) -> None:  # noqa: ANN001
    async with client(env) as (_, c):
        g = await c.generate(model="tiny", prompt="Once upon", options=_opts(num_predict=5), raw=True)
        assert g.done and g.eval_count == 5 and len(g.context) == g.prompt_eval_count + 5
        assert g.prompt_eval_duration > 0 and g.eval_duration > 0
        parts = [p async for p in await c.generate(model="tiny", prompt="Once upon", raw=True,
                                                    options=_opts(num_predict=5), stream=True)]
        assert "".join(p.response for p in parts) == g.response and parts[-1].context == g.context
        # `context` continues where the last answer ended: the same tokens as one longer raw prompt
        more = await c.generate(model="tiny", prompt="", context=g.context, raw=True, options=_opts(num_predict=3))
        assert more.done_reason == "load"  # no prompt: Ollama's "load the model" request
        more = await c.generate(model="tiny", prompt=" and", context=g.context, raw=True, options=_opts(num_predict=3))
        assert more.prompt_eval_count > len(g.context) and more.context[:len(g.context)] == g.context
        templated = await c.generate(model="tiny", prompt="Once upon", system="sys", options=_opts(num_predict=2))
        assert templated.prompt_eval_count > g.prompt_eval_count  # the chat template wraps it
        with pytest.raises(ollama.ResponseError) as e:  # the tiny llama vocabulary has no FIM tokens
            await c.generate(model="tiny", prompt="def f(", suffix="):", options=_opts(num_predict=2))
        assert e.value.status_code == 400 and "fill-in-the-middle" in e.value.error
        with pytest.raises(ollama.ResponseError) as e:
            await c.generate(model="tiny", prompt="x", images=[b"\x89PNG"])
        assert e.value.status_code == 400 and "could not be decoded" in e.value.error
        with pytest.raises(ollama.ResponseError) as e:  # unloading affects everyone: admin only
            await c.generate(model="tiny", keep_alive=0)
        assert e.value.status_code == 403
        with pytest.raises(ollama.ResponseError) as e:
            await c.generate(model="tiny", prompt="x", keep_alive=0)
        assert e.value.status_code == 403
        # a request's keep_alive replaces the catalog's 10m until the model unloads
        before = (await c.ps()).models[0].expires_at
        await c.generate(model="tiny", prompt="x", keep_alive="2h", options=_opts(num_predict=1))
        after = (await c.ps()).models[0].expires_at
        assert (after - before).total_seconds() > 3600
        with pytest.raises(ollama.ResponseError) as e:
            await c.generate(model="tiny", prompt="x", keep_alive="soon")
        assert e.value.status_code == 400 and "keep_alive" in e.value.error
    async with client(env, "admin") as (_, c):
        await c.generate(model="tiny", prompt="hi", options=_opts(num_predict=1))
        assert [m.model for m in (await c.ps()).models] == ["tiny"]
        r = await c.generate(model="tiny", keep_alive=0)
        assert r.done_reason == "unload" and (await c.ps()).models == []
        await c.generate(model="tiny", prompt="hi", keep_alive=0, options=_opts(num_predict=1))
        assert (await c.ps()).models == []  # unloaded once the request was done


async def test_embed_and_embeddings(env) -> None:  # noqa: ANN001
    async with client(env) as (_, c):
        r = await c.embed(model="emb", input=["one", "two words"])
        assert len(r.embeddings) == 2 and len(r.embeddings[0]) == 64 and r.prompt_eval_count > 0
        single = await c.embed(model="emb", input="one")
        assert single.embeddings[0] == pytest.approx(r.embeddings[0], abs=1e-5)
        old = await c.embeddings(model="emb", prompt="one")
        assert old.embedding == pytest.approx(r.embeddings[0], abs=1e-5)
        with pytest.raises(ollama.ResponseError) as e:
            await c.embed(model="tiny", input="x")
        assert e.value.status_code == 400


async def test_pull_streams_progress_and_needs_admin(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    from appliance.store import Store

    settings = write_config(tmp_path, {"tiny": {"source": f"file://{tiny_models['a']}", "context": 64},
                                       "emb": {"source": f"file://{tiny_models['b']}", "context": 64,
                                               "embedding": True}})
    store = Store.open(settings.config.store.path)  # empty: nothing pulled
    keys = {"user": create_key(settings.keys_path, "user")[0],
            "admin": create_key(settings.keys_path, "root", scope="admin")[0]}
    env = (settings, store, keys)
    async with client(env) as (_, c):
        assert (await c.list()).models == []
        with pytest.raises(ollama.ResponseError) as e:
            await c.pull("tiny")
        assert e.value.status_code == 403
    async with client(env, "admin") as (_, c):
        lines = [p async for p in await c.pull("tiny", stream=True)]
        assert lines[0].status == "pulling manifest" and lines[-1].status == "success"
        sizes = [p for p in lines if p.completed is not None]
        assert sizes and sizes[-1].completed == sizes[-1].total == tiny_models["a"].stat().st_size
        assert (await c.pull("emb", stream=False)).status == "success"
        with pytest.raises(ollama.ResponseError) as e:
            await c.pull("not-in-catalog")
        assert e.value.status_code == 404
        assert sorted(m.model for m in (await c.list()).models) == ["emb", "tiny"]


async def test_images_reach_a_vision_model(tmp_path: Path, tiny_gguf: Path) -> None:
    """Ollama's base64 `images` take /v1's image path: a model with a projector reads them
    (each adds its image tokens), one without says so."""
    from test_api_vision import N_IMG, env_for
    from test_vision import png

    settings, store, token = env_for(tmp_path, tiny_gguf)
    async with serving(settings, store=store) as d:
        c = ollama.AsyncClient(host=d.url, headers={"Authorization": f"Bearer {token}"})
        ask = {"role": "user", "content": "What is this?"}
        one = await c.chat(model="vl", messages=[{**ask, "images": [png(20, 20)]}], options=_opts(num_predict=2))
        two = await c.chat(model="vl", messages=[{**ask, "images": [png(20, 20), png(10, 30)]}],
                           options=_opts(num_predict=2))
        assert one.eval_count == 2 and two.prompt_eval_count - one.prompt_eval_count == N_IMG
        assert "vision" in (await c.show("vl")).capabilities and "vision" not in (await c.show("text")).capabilities
        g1 = await c.generate(model="vl", prompt="What is this?", images=[png(20, 20)], options=_opts(num_predict=2))
        assert g1.prompt_eval_count == one.prompt_eval_count  # the same template around the same image
        with pytest.raises(ollama.ResponseError) as e:
            await c.chat(model="text", messages=[{**ask, "images": [png(20, 20)]}], options=_opts(num_predict=2))
        assert e.value.status_code == 400 and "does not take images" in e.value.error
        with pytest.raises(ollama.ResponseError) as e:
            await c.generate(model="vl", prompt="x", raw=True, images=[png(20, 20)])
        assert e.value.status_code == 400 and "raw" in e.value.error
