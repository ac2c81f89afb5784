"""Images over the OpenAI chat API, end to end: a tiny llama model with a synthetic LLaVA
("mlp") projector pulled beside it (and a tiny qwen2vl model with a Qwen2-VL projector, whose
decoder uses M-RoPE), the official openai client, real sockets."""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path
from typing import Any, AsyncIterator

import openai
import pytest
from aiohttp import web

from appliance.api.schemas import IMAGE_MARKER
from appliance.auth import create_key
from appliance.engine.vision import MARKER
from test_api_support import openai_client, pull_all, serving, write_config
from tests.ggufmaker import make_gguf
from tests.mmprojmaker import ProjShape, make_mmproj
from tests.test_vision import MROPE, MROPE_PROJ, llama_cpps_own_greedy, png

N_IMG = ProjShape().n_image_tokens
NO_EOS = {"2": -100}


def data_url(b: bytes) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b).decode()}}


def env_for(tmp_path: Path, tiny: Path, **server: Any):  # noqa: ANN201
    proj = make_mmproj(tmp_path / "mmproj-tiny.gguf")
    settings = write_config(tmp_path, {
        "vl": {"source": f"file://{tiny}", "mmproj": f"file://{proj}", "context": 256, "parallel": 2},
        "text": {"source": f"file://{tiny}", "context": 256, "parallel": 2},
    }, server={"max_images": 3, "max_image_pixels": 1000, **server})
    store = pull_all(settings)
    token, _ = create_key(settings.keys_path, "tester")
    return settings, store, token


client = openai_client  # a daemon serving the env, and a strict openai client on it


async def chat(c: openai.AsyncOpenAI, content: list[dict[str, Any]], model: str = "vl") -> Any:
    return await c.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                           max_tokens=3, temperature=0, logit_bias=NO_EOS)


def test_the_api_marker_is_libmtmds() -> None:
    assert IMAGE_MARKER == MARKER


async def test_image_requests_return_200_and_count_the_image_tokens(tmp_path: Path, tiny_gguf: Path) -> None:
    async with client(env_for(tmp_path, tiny_gguf)) as c:
        one = await chat(c, [{"type": "text", "text": "What is"}, data_url(png(20, 20)), {"type": "text", "text": " this?"}])
        two = await chat(c, [{"type": "text", "text": "What is"}, data_url(png(20, 20)),
                             data_url(png(10, 30, (0, 0, 9))), {"type": "text", "text": " this?"}])
        assert one.choices[0].finish_reason == "length" and one.usage.completion_tokens == 3
        assert two.usage.prompt_tokens - one.usage.prompt_tokens == N_IMG


@pytest.mark.parametrize("content, message", [
    ([data_url(b"not an image at all")], "image 1 could not be decoded"),
    ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}], "not valid base64"),
    ([data_url(png(40, 30))], "image 1 has 40x30 pixels; at most 1000"),
    ([data_url(png(5, 5))] * 4, "4 images; at most 3"),
    ([{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}], "does not fetch image URLs"),
    ([{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}], "must be a data: URL"),
])
async def test_bad_images_get_400_and_nothing_else_is_affected(tmp_path: Path, tiny_gguf: Path,
                                                               content: list[dict[str, Any]], message: str) -> None:
    async with client(env_for(tmp_path, tiny_gguf)) as c:
        with pytest.raises(openai.BadRequestError, match=message):
            await chat(c, content)
        ok = await chat(c, [data_url(png(5, 5)), {"type": "text", "text": "fine"}])
        assert ok.usage.prompt_tokens > N_IMG


async def test_an_image_for_a_model_without_a_projector_is_a_400(tmp_path: Path, tiny_gguf: Path) -> None:
    async with client(env_for(tmp_path, tiny_gguf)) as c:
        with pytest.raises(openai.BadRequestError, match="does not take images"):
            await chat(c, [data_url(png(5, 5)), {"type": "text", "text": "hi"}], model="text")
        assert (await chat(c, [{"type": "text", "text": "hi"}], model="text")).usage.completion_tokens == 3


async def test_http_image_urls_are_fetched_only_when_allowed(tmp_path: Path, tiny_gguf: Path) -> None:
    app = web.Application()
    async def cat(_: web.Request) -> web.Response:
        return web.Response(body=png(8, 8), content_type="image/png")

    app.router.add_get("/cat.png", cat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with client(env_for(tmp_path, tiny_gguf, fetch_image_urls=True)) as c:
            url = {"type": "image_url", "image_url": {"url": f"http://127.0.0.1:{port}/cat.png"}}
            r = await chat(c, [url, {"type": "text", "text": "hi"}])
            assert r.usage.prompt_tokens > N_IMG
            with pytest.raises(openai.BadRequestError, match="returned HTTP 404"):
                await chat(c, [{"type": "image_url", "image_url": {"url": f"http://127.0.0.1:{port}/no.png"}}])
    finally:
        await runner.cleanup()


async def test_an_image_request_to_an_m_rope_model_returns_200_and_counts_the_image_tokens(tmp_path: Path) -> None:
    files = make_gguf(tmp_path / "src" / "qvl.gguf", MROPE), make_mmproj(tmp_path / "src" / "qvl-mmproj.gguf", MROPE_PROJ)
    settings = write_config(tmp_path, {"qvl": {"source": f"file://{files[0]}", "mmproj": f"file://{files[1]}",
                                               "context": 256, "parallel": 2}}, server={"max_image_pixels": 10_000})
    store = pull_all(settings)
    token, _ = create_key(settings.keys_path, "tester")
    image = png(64, 32)
    _, _, with_image, spans = llama_cpps_own_greedy(files, f"x{MARKER}", [image], 0, [])
    _, _, without, _ = llama_cpps_own_greedy(files, "x", [], 0, [])
    async with client((settings, store, token)) as c:
        one = await chat(c, [{"type": "text", "text": "What is"}, data_url(image), {"type": "text", "text": " this?"}],
                         model="qvl")
        two = await chat(c, [{"type": "text", "text": "What is"}, data_url(image), data_url(image),
                             {"type": "text", "text": " this?"}], model="qvl")
    assert one.choices[0].finish_reason == "length" and one.usage.completion_tokens == 3
    assert spans[0][0] > spans[0][1]  # more tokens than positions
    assert two.usage.prompt_tokens - one.usage.prompt_tokens == with_image - without  # its tokens, not positions
