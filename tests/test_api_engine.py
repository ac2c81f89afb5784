"""The OpenAI API end to end on real llama.cpp (tiny random-weight GGUFs), with the
official openai client in strict mode as the client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from array import array
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import openai
import pytest

from appliance.api.context import CTX_KEY
from appliance.auth import create_key
from test_api_support import pull_all, serving, write_config

EOS = 2  # the llama-spm vocab's </s>
NO_EOS = {str(EOS): -100}  # random weights: keep generating to max_tokens


@pytest.fixture
def env(tmp_path: Path, tiny_models: dict[str, Path]):  # noqa: ANN201
    settings = write_config(tmp_path, {
        "tiny": {"source": f"file://{tiny_models['a']}", "context": 256, "parallel": 2, "keep_alive": "forever"},
        "emb": {"source": f"file://{tiny_models['b']}", "context": 64, "parallel": 2, "embedding": True},
    })
    store = pull_all(settings)
    token, _ = create_key(settings.keys_path, "tester")
    return settings, store, token


@contextlib.asynccontextmanager
async def client(env) -> AsyncIterator[tuple[Any, openai.AsyncOpenAI]]:  # noqa: ANN001
    settings, store, token = env
    async with serving(settings, store=store) as d:
        async with openai.AsyncOpenAI(base_url=d.url + "/v1", api_key=token, _strict_response_validation=True,
                                      max_retries=0) as c:
            yield d, c


async def test_completion_n2_usage_and_lengths(env) -> None:  # noqa: ANN001
    async with client(env) as (_, c):
        r = await c.completions.create(model="tiny", prompt="Hello", max_tokens=6, n=2, logit_bias=NO_EOS, seed=1)
        assert [ch.index for ch in r.choices] == [0, 1]
        assert all(ch.finish_reason == "length" for ch in r.choices)
        assert r.usage.completion_tokens == 12 and r.usage.prompt_tokens > 0
        multi = await c.completions.create(model="tiny", prompt=["a", "b"], max_tokens=3, logit_bias=NO_EOS)
        assert [ch.index for ch in multi.choices] == [0, 1]
        echo = await c.completions.create(model="tiny", prompt="Echo me", max_tokens=2, echo=True, logit_bias=NO_EOS)
        assert echo.choices[0].text.startswith("Echo me")
        prompt = "The same long prompt, twice: its prefix stays in a slot's cache. " * 3
        first = await c.completions.create(model="tiny", prompt=prompt, max_tokens=2, logit_bias=NO_EOS)
        again = await c.completions.create(model="tiny", prompt=prompt, max_tokens=2, logit_bias=NO_EOS)
        assert first.usage.prompt_tokens == again.usage.prompt_tokens
        assert again.usage.prompt_tokens_details is not None
        assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1


async def test_chat_non_streaming_strict(env) -> None:  # noqa: ANN001
    async with client(env) as (_, c):
        r = await c.chat.completions.create(
            model="tiny", messages=[{"role": "system", "content": "be brief"},
                                    {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            max_completion_tokens=5, logit_bias=NO_EOS, temperature=0, logprobs=True, top_logprobs=2)
        ch = r.choices[0]
        assert r.object == "chat.completion" and ch.message.role == "assistant"
        assert ch.finish_reason == "length" and r.usage.completion_tokens == 5
        assert ch.logprobs is not None and len(ch.logprobs.content) == 5
        assert all(len(t.top_logprobs) == 2 for t in ch.logprobs.content)


async def test_chat_stream_with_include_usage(env) -> None:  # noqa: ANN001
    async with client(env) as (_, c):
        stream = await c.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=6, n=2,
            logit_bias=NO_EOS, stream=True, stream_options={"include_usage": True})
        chunks = [ch async for ch in stream]
    assert len({(ch.id, ch.created) for ch in chunks}) == 1
    *body, last = chunks
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 12
    assert all(ch.usage is None for ch in body)
    for idx in (0, 1):
        mine = [ch.choices[0] for ch in body if ch.choices[0].index == idx]
        roles = [c.delta.role for c in mine if c.delta.role]
        assert roles == ["assistant"] and mine[0].delta.role == "assistant"
        assert [c.finish_reason for c in mine if c.finish_reason] == ["length"]
        assert mine[-1].finish_reason == "length"


async def test_chat_stream_without_usage_and_raw_wire_format(env) -> None:  # noqa: ANN001
    async with client(env) as (d, c):
        stream = await c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=3, logit_bias=NO_EOS, stream=True)
        chunks = [ch async for ch in stream]
        assert all(ch.usage is None for ch in chunks) and chunks[-1].choices[0].finish_reason == "length"
        # completions stream on the wire: data lines, [DONE] last, then the response ends
        async with aiohttp.ClientSession() as s:
            async with s.post(d.url + "/v1/completions", headers={"Authorization": f"Bearer {env[2]}"},
                              json={"model": "tiny", "prompt": "x", "max_tokens": 3, "stream": True,
                                    "logit_bias": NO_EOS, "stream_options": {"include_usage": True}}) as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
                raw = (await r.read()).decode()
    events = [e for e in raw.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    objs = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert objs[-1]["choices"] == [] and objs[-1]["usage"]["completion_tokens"] == 3
    assert all("usage" in o and o["usage"] is None for o in objs[:-1])
    assert [o["choices"][0]["finish_reason"] for o in objs[:-1]].count("length") == 1


async def test_embeddings_base64_default_and_float(env) -> None:  # noqa: ANN001
    async with client(env) as (d, c):
        # The client asks for base64 by default and decodes it after parsing; its strict mode
        # validates before decoding (a client quirk), so the default path runs non-strict.
        async with openai.AsyncOpenAI(base_url=d.url + "/v1", api_key=env[2], max_retries=0) as loose:
            r = await loose.embeddings.create(model="emb", input=["hello world", "goodbye"])
        f = await c.embeddings.create(model="emb", input=["hello world", "goodbye"], encoding_format="float")
        tok = await c.embeddings.create(model="emb", input=[[1, 15043, 3186]], encoding_format="float")
        assert len(r.data) == 2 and r.usage.prompt_tokens > 0 and len(tok.data) == 1
        for a, b in zip(r.data, f.data):
            assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
        assert sum(x * x for x in f.data[0].embedding) == pytest.approx(1.0, abs=1e-3)
        async with aiohttp.ClientSession() as s:  # base64 is float32 little-endian
            async with s.post(d.url + "/v1/embeddings", headers={"Authorization": f"Bearer {env[2]}"},
                              json={"model": "emb", "input": "hello world", "encoding_format": "base64"}) as resp:
                b64 = (await resp.json())["data"][0]["embedding"]
        vec = array("f", base64.b64decode(b64))
        assert list(vec) == pytest.approx(f.data[0].embedding, abs=1e-6)
        with pytest.raises(openai.BadRequestError) as e:
            await c.embeddings.create(model="tiny", input="x")
        assert e.value.body["param"] == "model"


async def test_prompt_over_context_is_400_streaming_or_not(env) -> None:  # noqa: ANN001
    long = "hello " * 400  # > 256 tokens
    async with client(env) as (_, c):
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as e:
                await c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": long}], stream=stream)
            assert e.value.code == "context_length_exceeded"
            with pytest.raises(openai.BadRequestError) as e:
                await c.completions.create(model="tiny", prompt=long, stream=stream)
            assert e.value.code == "context_length_exceeded"
        with pytest.raises(openai.BadRequestError) as e:
            await c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], n=3)
        assert e.value.body["param"] == "n"


class _Spy:
    """Wraps the backend: hands out a runner whose generations are recorded, and signals
    once a handler has pulled its first delta (the request is generating)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.generating = asyncio.Event()
        self.gens: list[Any] = []
        self.runner: Any = None

    @contextlib.asynccontextmanager
    async def lease(self, model_id: str, key_name: str, *, slots: int = 1) -> AsyncIterator[Any]:
        async with self.backend.lease(model_id, key_name, slots=slots) as runner:
            self.runner = runner
            spy = self

            class R:
                def __getattr__(self, name: str) -> Any:
                    return getattr(runner, name)

                def generate(self, req: Any) -> Any:
                    gen = runner.generate(req)
                    spy.gens.append(gen)

                    class G:
                        usage = property(lambda _: gen.usage)
                        delivered = property(lambda _: gen.delivered)
                        finished = property(lambda _: gen.finished)

                        def ready(self) -> list[Any]:
                            return gen.ready()

                        async def __anext__(self) -> Any:
                            d = await gen.__anext__()
                            spy.generating.set()
                            return d

                        async def aclose(self) -> None:
                            await gen.aclose()

                    return G()

            yield R()


@pytest.mark.parametrize("stream", [False, True])
async def test_client_disconnect_frees_the_slot(env, stream: bool) -> None:  # noqa: ANN001
    async with client(env) as (d, _):
        ctx = d.app[CTX_KEY]
        spy = _Spy(ctx.backend)
        ctx.backend = spy
        body = {"model": "tiny", "prompt": "go", "max_tokens": 250, "logit_bias": NO_EOS, "stream": stream}

        async def call() -> None:
            async with aiohttp.ClientSession() as s:
                async with s.post(d.url + "/v1/completions", headers={"Authorization": f"Bearer {env[2]}"},
                                  json=body) as r:
                    await r.read()

        task = asyncio.create_task(call())
        await spy.generating.wait()
        assert spy.runner.busy_slots == 1
        task.cancel()  # the client hangs up mid-generation
        with pytest.raises(asyncio.CancelledError):
            await task
        gen = spy.gens[0]
        with contextlib.suppress(StopAsyncIteration):  # the runner posts the end once the slot is freed
            while True:
                await gen.__anext__()
        assert spy.runner.busy_slots == 0
        assert gen.usage.completion_tokens < 250  # it was cut short, not run to the end


async def test_stop_string_tokens_get_no_logprobs(env) -> None:  # noqa: ANN001
    """A stop string is cut from the text, and so are its tokens' logprobs (llama-server
    drops them too): the logprob tokens spell exactly the text, streamed or not."""
    async with client(env) as (_, c):
        args = dict(model="tiny", prompt="Hello", max_tokens=10, temperature=0, logprobs=1, logit_bias=NO_EOS)
        full = (await c.completions.create(**args)).choices[0]
        toks, text = full.logprobs.tokens, full.text
        assert "".join(toks) == text
        i = next(i for i in range(2, len(toks)) if toks[i].strip() and text.find(toks[i]) == len("".join(toks[:i])))
        stopped = (await c.completions.create(**args, stop=[toks[i]])).choices[0]
        assert stopped.finish_reason == "stop" and stopped.text == "".join(toks[:i])
        assert stopped.logprobs.tokens == toks[:i]
        lax = openai.AsyncOpenAI(base_url=c.base_url, api_key=c.api_key, max_retries=0)  # strict: chunks lack finish_reason
        streamed = [ch async for ch in await lax.completions.create(**args, stop=[toks[i]], stream=True)]
        assert "".join(t for ch in streamed if ch.choices and ch.choices[0].logprobs
                       for t in ch.choices[0].logprobs.tokens) == stopped.text
