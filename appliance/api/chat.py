"""POST /v1/chat/completions: messages -> prompt (the model's chat template), sampling,
grammar for response_format and tools, and OpenAI's response or chunk stream.

Stream rules kept here: role only in a choice's first delta; exactly one finish_reason per
choice; tool calls stream with an integer index, id and name only in each call's first delta
(shapes in api/chunks.py, the stream itself in api/relay.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..config import ModelConfig
from ..engine.protocol import ServingRunner
from ..engine.types import Delta, GenerationRequest, TokenLogprob, Usage
from . import chunks
from .chat_render import ChatPrompt, render
from .chunks import Chunk, Head
from .context import CTX_KEY, key_name, resolve_model
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


class ChatChoices:
    """The choices of one chat response. With tools, text is held back until the choice ends
    (the tool-call syntax must be parsed whole), so content streams only when no tools apply."""

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
        out = []
        if not self.prompt.parses_tools and (d.text or d.logprobs or not ch.started):
            delta: dict[str, Any] = {"content": d.text} if ch.started else {"role": "assistant", "content": d.text}
            ch.started = True
            out.append(chunks.chat_delta(self.head, d.index, delta, logprobs=d.logprobs if self.want_lp else None))
        if d.finish_reason:
            out += self._finish_chunks(ch)
        return out

    def _finish_chunks(self, ch: _Choice) -> list[Chunk]:
        """The end of one streamed choice: held-back content and tool calls (tools), then its one finish."""
        content, calls = self._split(ch)
        out = []
        if self.prompt.parses_tools:
            first = {"role": "assistant", "content": content or (None if calls else "")}
            out.append(chunks.chat_delta(self.head, ch.index, first, logprobs=ch.logprobs if self.want_lp else None))
            out += chunks.tool_call_chunks(self.head, ch.index, calls)
        out.append(chunks.chat_delta(self.head, ch.index, {}, self._finish(ch, calls)))
        return out

    def _split(self, ch: _Choice) -> tuple[str, list[dict[str, Any]]]:
        if not self.prompt.parses_tools:
            return ch.text, []
        content, calls = self.prompt.split(ch.text)
        return content, chunks.tool_call_ids(calls)

    @staticmethod
    def _finish(ch: _Choice, calls: list[dict[str, Any]]) -> str:
        return "tool_calls" if calls else ch.finish or "stop"

    def response(self, usage: Usage) -> dict[str, Any]:
        out = []
        for ch in self.choices:
            content, calls = self._split(ch)
            out.append(chunks.chat_choice(ch.index, content, calls, self._finish(ch, calls),
                                          ch.logprobs if self.want_lp else None))
        return chunks.chat_response(self.head, out, usage)


async def chat_generation(runner: ServingRunner, body: ChatCompletionRequest, cfg: ModelConfig,
                          request_id: str, **extra: Any) -> tuple[ChatPrompt, GenerationRequest]:
    """The prompt and engine request of one chat body (also for the Ollama and Responses
    APIs, which arrive here as a ChatCompletionRequest); `cfg` gives the model's sampling
    defaults, `extra` adds sampling parameters."""
    # Jinja rendering and JSON-schema -> grammar conversion are CPU work: off the loop.
    prompt: ChatPrompt = await asyncio.to_thread(render, runner, body)
    params = sampling_params(
        body,
        cfg,
        max_tokens=body.token_limit,
        stop=tuple(body.stops) + prompt.stop,
        logprobs=body.logprobs,
        top_logprobs=body.top_logprobs or 0,
        grammar=prompt.grammar,
        grammar_triggers=prompt.grammar_triggers,
        **extra,
    )
    return prompt, GenerationRequest(prompt.text, params, add_special=prompt.add_special, request_id=request_id)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = parse_body(ChatCompletionRequest, await read_json(request))
    mid, cfg = resolve_model(request, body.model)
    head = Head.new("chat", mid, body.include_usage)
    async with request.app[CTX_KEY].backend.lease(mid, key_name(request), slots=body.n) as runner:
        prompt, req = await chat_generation(runner, body, cfg, request[REQUEST_ID])
        choices = ChatChoices(head, prompt, body.n, body.stream, body.logprobs)
        return await relay(request, head, body.stream, choices, [lambda: runner.generate(req)])
