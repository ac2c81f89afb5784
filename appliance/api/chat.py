"""POST /v1/chat/completions: messages -> prompt (the model's chat template), sampling,
grammar for response_format and tools, and OpenAI's response or chunk stream.

Stream rules kept here: role only in a choice's first delta; exactly one finish_reason per
choice; tool calls stream with an integer index, id and name only in each call's first delta,
then argument pieces; thinking streams as `delta.reasoning_content` (shapes in api/chunks.py,
the stream itself in api/relay.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..config import ModelConfig
from ..engine.guidance import compile_async
from ..engine.protocol import ServingRunner
from ..engine.tools.stream import DeltaStream
from ..engine.types import Delta, GenerationRequest, TokenLogprob, Usage
from . import chunks
from .chat_render import ChatPrompt, render
from .chunks import Chunk, Head
from .context import CTX_KEY, key_name, resolve_model
from .images import IMAGES_KEY, ImageLimits, load_images
from .model_defaults import with_model_defaults
from .relay import relay
from .sampling import sampling_params
from .schemas import ChatCompletionRequest, parse_body, read_json
from .state import REQUEST_ID


@dataclass
class _Choice:
    """One choice's output so far."""

    index: int
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish: str | None = None
    started: bool = False  # its first (role-carrying) delta was streamed
    sent: DeltaStream = field(default_factory=DeltaStream)  # what was streamed of reasoning, content, calls
    pending_lp: list[TokenLogprob] = field(default_factory=list)  # of tokens held back, for the next chunk


class ChatChoices:
    """The choices of one chat response. Output is read by the prompt's OutputReader (reasoning,
    content, tool calls in the model family's syntax) as it grows, so reasoning, content and
    each call (id and name first, then argument pieces) stream as soon as they are certain;
    a plain reader (no tools, nothing to split) streams the text as it comes."""

    def __init__(self, head: Head, prompt: ChatPrompt, n: int, stream: bool, logprobs: bool) -> None:
        self.head, self.prompt, self.stream, self.want_lp = head, prompt, stream, logprobs
        self.choices = [_Choice(i) for i in range(n)]

    def add(self, generation: int, d: Delta) -> list[Chunk]:
        ch = self.choices[d.index]
        ch.text += d.text
        ch.logprobs.extend(d.logprobs)
        if d.finish_reason:
            ch.finish = d.finish_reason
        if not self.stream:
            return []
        if self.prompt.reader.plain:
            deltas = [{"content": d.text}] if d.text or d.logprobs or not ch.started else []
        else:
            deltas = ch.sent.update(self.prompt.reader.read(ch.text, final=bool(d.finish_reason)),
                                    final=bool(d.finish_reason))
        if self.want_lp:
            ch.pending_lp.extend(d.logprobs)
        if d.finish_reason and not ch.started and not deltas:
            deltas = [{"content": ""}]
        out = []
        for delta in deltas:
            if not ch.started:
                delta = {"role": "assistant", **delta}
                ch.started = True
            lp, ch.pending_lp = (ch.pending_lp, []) if self.want_lp else (None, ch.pending_lp)
            out.append(chunks.chat_delta(self.head, d.index, delta, logprobs=lp))
        if d.finish_reason:
            lp = ch.pending_lp if self.want_lp and ch.pending_lp else None
            out.append(chunks.chat_delta(self.head, d.index, {}, self._finish(ch, bool(ch.sent.calls)), logprobs=lp))
        return out

    @staticmethod
    def _finish(ch: _Choice, calls: bool) -> str:
        return "tool_calls" if calls else ch.finish or "stop"

    def response(self, usage: Usage) -> dict[str, Any]:
        out = []
        for ch in self.choices:
            p = self.prompt.reader.read(ch.text, final=True)
            calls = chunks.tool_call_ids([(c.name, c.arguments) for c in p.calls])
            choice = chunks.chat_choice(ch.index, p.content, calls, self._finish(ch, bool(calls)),
                                        ch.logprobs if self.want_lp else None)
            if p.reasoning:
                choice["message"]["reasoning_content"] = p.reasoning
            out.append(choice)
        return chunks.chat_response(self.head, out, usage)


async def chat_generation(runner: ServingRunner, body: ChatCompletionRequest, cfg: ModelConfig,
                          request_id: str, images: list[bytes] | None = None,
                          **extra: Any) -> tuple[ChatPrompt, GenerationRequest]:
    """The prompt and engine request of one chat body (also for the Ollama and Responses
    APIs, which arrive here as a ChatCompletionRequest with the model's defaults applied);
    `cfg` gives the model's sampling defaults, `images` the loaded image bytes, `extra` adds
    sampling parameters."""
    # Jinja rendering and JSON-schema -> grammar conversion are CPU work: off the loop.
    prompt: ChatPrompt = await asyncio.to_thread(render, runner, body)
    # images decoded and tokenized by the projector: CPU work, off the loop too
    vision = await asyncio.to_thread(runner.tokenize_images, prompt.text, images, prompt.add_special) \
        if images else None
    constraint = None
    if prompt.grammar is not None:  # llguidance, compiled off the loop under a deadline
        constraint = await compile_async(prompt.grammar, runner.vocab, param=prompt.grammar_param)
    params = sampling_params(
        body,
        cfg,
        max_tokens=body.token_limit,
        stop=tuple(body.stops) + prompt.stop,
        logprobs=body.logprobs,
        top_logprobs=body.top_logprobs or 0,
        constraint=constraint,
        preserved=prompt.preserved,
        **extra,
    )
    return prompt, GenerationRequest(prompt.text, params, add_special=prompt.add_special, request_id=request_id,
                                     vision=vision)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = parse_body(ChatCompletionRequest, await read_json(request))
    mid, cfg = resolve_model(request, body.model)
    body = with_model_defaults(body, cfg)
    # read and checked before a model is leased: a bad image costs nobody a slot
    urls = [u for i, m in enumerate(body.messages) for u in m.image_urls(i)]
    images = await load_images(urls, request.app.get(IMAGES_KEY, ImageLimits()))
    head = Head.new("chat", mid, body.include_usage)
    async with request.app[CTX_KEY].backend.lease(mid, key_name(request), slots=body.n) as runner:
        prompt, req = await chat_generation(runner, body, cfg, request[REQUEST_ID], images)
        choices = ChatChoices(head, prompt, body.n, body.stream, body.logprobs)
        return await relay(request, head, body.stream, choices, [lambda: runner.generate(req)])
