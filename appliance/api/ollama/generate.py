"""POST /api/chat and /api/generate: Ollama's generation endpoints over the same engine path
as /v1 (chat template, tools, `format` grammar), streamed as NDJSON by default.

Each streamed line is `{"model", "created_at", "message": {...}, "done": false}` (chat) or
`{..., "response": "...", "done": false}` (generate); the last line has `done: true`,
`done_reason` and the counters. With tools, the text is held back to the end, where the
parsed calls arrive as `message.tool_calls` (arguments as objects). A body without messages
(chat) or prompt (generate) loads the model, or unloads it with `keep_alive: 0`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from ...auth import ADMIN
from ...engine.types import Delta, GenerationRequest, Usage
from ...config import ModelConfig
from ...engine.guidance import compile_async
from ...engine.protocol import ServingRunner
from ...errors import InsufficientScope, InvalidRequest
from ..admin import SCHEDULER_KEY
from ..chat import chat_generation
from ..chat_render import ChatPrompt, response_grammar
from ..chunks import Chunk
from ..context import CTX_KEY, api_key, key_name, resolve_model
from ..images import IMAGES_KEY, ImageLimits, load_images
from ..model_defaults import with_model_defaults
from ..relay import relay
from ..sampling import sampling_params
from ..schemas import ChatCompletionRequest, parse_body, read_json
from ..sse import NDJSONStream
from ..state import REQUEST_ID
from . import convert
from .schemas import ChatRequest, GenerateRequest, KeepAlive, keep_alive_seconds


class OllamaChoices:
    """One choice in Ollama's shape; also the relay's `head`, whose usage chunk is the last line."""

    include_usage = True

    def __init__(self, kind: str, model: str, stream: bool, prompt: ChatPrompt | None,
                 t0: int, load_ns: int, context: list[int] | None = None) -> None:
        self.kind, self.model, self.stream, self.prompt = kind, model, stream, prompt
        self.t0, self.load_ns, self.context = t0, load_ns, context
        self.text, self.finish = "", "stop"
        self.tokens: list[int] = []

    @property
    def _holds_text(self) -> bool:
        """Tools or separate reasoning: the output is read whole (the family's syntax) at the end."""
        return self.prompt is not None and not self.prompt.reader.plain

    def _line(self, text: str, calls: list[dict[str, Any]] | None = None, done: bool = False,
              thinking: str = "") -> Chunk:
        line: Chunk = {"model": self.model, "created_at": convert.now_iso()}
        if self.kind == "chat":
            msg: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                msg["thinking"] = thinking
            if calls:
                msg["tool_calls"] = calls
            line["message"] = msg
        else:
            line["response"] = text
            if thinking:
                line["thinking"] = thinking
        line["done"] = done
        return line

    def add(self, generation: int, d: Delta) -> list[Chunk]:
        self.text += d.text
        self.tokens.extend(d.token_ids)
        if d.finish_reason:
            self.finish = d.finish_reason
        if not self.stream:
            return []
        if not self._holds_text:
            return [self._line(d.text)] if d.text else []
        if d.finish_reason:
            content, calls, thinking = self._split()
            return [self._line(content, calls, thinking=thinking)] if content or calls or thinking else []
        return []

    def _split(self) -> tuple[str, list[dict[str, Any]], str]:
        """(content, tool calls, reasoning) of the whole output."""
        if not self._holds_text:
            return self.text, [], ""
        assert self.prompt is not None
        p = self.prompt.reader.read(self.text, final=True)
        return p.content, convert.tool_calls([(c.name, c.arguments) for c in p.calls]), p.reasoning

    def _final(self, usage: Usage, text: str, calls: list[dict[str, Any]] | None, thinking: str = "") -> Chunk:
        line = self._line(text, calls, done=True, thinking=thinking)
        line["done_reason"] = self.finish
        line.update(convert.timings(usage, time.monotonic_ns() - self.t0, self.load_ns))
        if self.context is not None:
            line["context"] = self.context + self.tokens
        return line

    def usage_chunk(self, usage: Usage) -> Chunk:
        return self._final(usage, "", None)

    def response(self, usage: Usage) -> dict[str, Any]:
        content, calls, thinking = self._split()
        return self._final(usage, content, calls or None, thinking)


def _done(kind: str, model: str, reason: str) -> dict[str, Any]:
    line: dict[str, Any] = {"model": model, "created_at": convert.now_iso(), "done": True, "done_reason": reason}
    if kind == "chat":
        line["message"] = {"role": "assistant", "content": ""}
    else:
        line["response"] = ""
    return line


def apply_keep_alive(request: web.Request, mid: str, keep_alive: KeepAlive) -> float | None:
    """A request's keep_alive: how long the model stays loaded once idle, until it next
    unloads. 0 unloads it as soon as it is idle, which affects everyone: admin scope (or open mode)."""
    seconds = keep_alive_seconds(keep_alive)
    if seconds is None:
        return None
    key = api_key(request)
    if seconds == 0 and key is not None and not key.has_scope(ADMIN):
        raise InsufficientScope(f"key {key.name!r} lacks the 'admin' scope needed for keep_alive 0 (unloading)")
    request.app[SCHEDULER_KEY].set_keep_alive(mid, seconds)
    return seconds


async def _load_or_unload(request: web.Request, kind: str, mid: str, keep_alive: KeepAlive) -> web.Response:
    """Ollama's idiom for an empty request: load the model, or unload it with keep_alive 0."""
    if apply_keep_alive(request, mid, keep_alive) == 0:
        await request.app[SCHEDULER_KEY].unload(mid)
        return web.json_response(_done(kind, mid, "unload"))
    async with request.app[CTX_KEY].backend.lease(mid, key_name(request), slots=1):
        pass
    return web.json_response(_done(kind, mid, "load"))


async def chat(request: web.Request) -> web.StreamResponse:
    body = parse_body(ChatRequest, await read_json(request))
    mid, cfg = resolve_model(request, convert.catalog_name(request.app[CTX_KEY].directory.catalog, body.model))
    if not body.messages:
        return await _load_or_unload(request, "chat", mid, body.keep_alive)
    apply_keep_alive(request, mid, body.keep_alive)
    oa = with_model_defaults(convert.chat_request_body(body), cfg)
    images = await _images(request, oa)
    t0 = time.monotonic_ns()
    async with request.app[CTX_KEY].backend.lease(mid, key_name(request), slots=1) as runner:
        load_ns = time.monotonic_ns() - t0
        prompt, req = await chat_generation(runner, oa, cfg, request[REQUEST_ID], images)
        choices = OllamaChoices("chat", mid, body.stream, prompt, t0, load_ns)
        return await relay(request, choices, body.stream, choices,
                           [lambda: runner.generate(req)], stream_type=NDJSONStream)


async def _images(request: web.Request, oa: ChatCompletionRequest) -> list[bytes]:
    """The messages' images, read and checked before a model is leased (as /v1/chat does)."""
    urls = [u for i, m in enumerate(oa.messages) for u in m.image_urls(i)]
    return await load_images(urls, request.app.get(IMAGES_KEY, ImageLimits())) if urls else []


async def _generate_request(request: web.Request, runner: ServingRunner, cfg: ModelConfig,
                            body: GenerateRequest, images: list[bytes]) -> tuple[GenerationRequest, list[int]]:
    """raw: the prompt as given; suffix: a FIM prompt; else the chat template around
    `system` + `prompt` (+ `images`). `context` (a previous answer's tokens) goes first.
    Returns the engine request and the prompt's token ids (without images' embeddings)."""
    rid = request[REQUEST_ID]
    if body.raw or body.suffix is not None:
        oa = with_model_defaults(convert.chat_body(body.model, [{"role": "user", "content": "-"}], body.options,
                                                   body.format), cfg)
        grammar = await asyncio.to_thread(response_grammar, oa)  # CPU work: off the loop
        constraint = await compile_async(grammar, runner.vocab, param="format") if grammar is not None else None
        params = sampling_params(oa, cfg, max_tokens=oa.token_limit, constraint=constraint)
        if body.suffix is not None:
            ids = runner.fim_prompt(body.prompt, body.suffix)
        else:
            ids = runner.tokenize(body.prompt, not body.context, True)
    else:
        msgs = ([{"role": "system", "content": body.system}] if body.system else []) + \
            [{"role": "user", "content": convert.with_images(body.prompt, body.images)}]
        oa = with_model_defaults(convert.chat_body(body.model, msgs, body.options, body.format, think=body.think), cfg)
        rendered, base = await chat_generation(runner, oa, cfg, rid, images)
        if images:  # the projector's prompt as it is: no context tokens in front of image embeddings
            if body.context:
                raise InvalidRequest("context cannot be combined with images", param="context")
            return base, []
        params = base.params
        ids = runner.tokenize(rendered.text, rendered.add_special and not body.context, True)
    ids = list(body.context or []) + ids
    return GenerationRequest(ids, params, add_special=False, request_id=rid), ids


async def generate(request: web.Request) -> web.StreamResponse:
    body = parse_body(GenerateRequest, await read_json(request))
    mid, cfg = resolve_model(request, convert.catalog_name(request.app[CTX_KEY].directory.catalog, body.model))
    if body.template:
        raise InvalidRequest("template overrides are not supported; set chat_template in models.toml", param="template")
    if not body.prompt and body.suffix is None:
        return await _load_or_unload(request, "generate", mid, body.keep_alive)
    apply_keep_alive(request, mid, body.keep_alive)
    if body.images and (body.raw or body.suffix is not None):
        raise InvalidRequest("images need the chat template: not with raw or suffix", param="images")
    # read and checked before a model is leased, as on /v1/chat
    urls = [(f"images[{k}]", convert.data_url(b64)) for k, b64 in enumerate(body.images or [])]
    images = await load_images(urls, request.app.get(IMAGES_KEY, ImageLimits())) if urls else []
    t0 = time.monotonic_ns()
    async with request.app[CTX_KEY].backend.lease(mid, key_name(request), slots=1) as runner:
        load_ns = time.monotonic_ns() - t0
        req, ids = await _generate_request(request, runner, cfg, body, images)
        choices = OllamaChoices("generate", mid, body.stream, None, t0, load_ns, context=ids)
        return await relay(request, choices, body.stream, choices,
                           [lambda: runner.generate(req)], stream_type=NDJSONStream)
