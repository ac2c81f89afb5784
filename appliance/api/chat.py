"""POST /v1/chat/completions: messages -> prompt (the model's chat template), sampling,
grammar for response_format and tools, and OpenAI's response or chunk stream.

Stream rules kept here: role only in a choice's first delta; the same id and created in
every chunk; exactly one finish_reason per choice; with include_usage every chunk carries
`usage: null` and a last chunk has empty choices and the usage; tool calls stream with an
integer index, id and name only in each call's first delta.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..engine.guidance import compile_async
from ..engine.types import GenerationRequest
from ..errors import ApplianceError
from .chat_render import ChatPrompt, render
from .context import CTX_KEY, check_n, key_name, resolve_model
from .generation import chat_logprobs, close, next_delta, note_usage, sampling_params, usage_dict
from .schemas import ChatCompletionRequest, parse_body, read_json
from .sse import SSEStream
from .state import REQUEST_ID, request_info


@dataclass
class _Choice:
    """One choice's output so far. With tools, text is held back until the end (the tool
    call syntax must be parsed whole), so content is streamed only when no tools apply."""

    index: int
    text: str = ""
    logprobs: list = field(default_factory=list)
    finish: str | None = None
    started: bool = False


def _tool_calls(calls: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {"id": "call_" + secrets.token_hex(12), "type": "function", "function": {"name": name, "arguments": args}}
        for name, args in calls
    ]


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = parse_body(ChatCompletionRequest, await read_json(request))
    mid, cfg = resolve_model(request, body.model)
    check_n(body.n, cfg, mid)
    info = request_info(request)
    info["stream"] = body.stream
    cid, created = "chatcmpl-" + secrets.token_hex(12), int(time.time())

    async with request.app[CTX_KEY].backend.lease(mid, key_name(request), slots=body.n) as runner:
        prompt: ChatPrompt = render(runner, body)
        constraint = None
        if prompt.grammar is not None:  # compiled off the event loop, under a deadline
            constraint = await compile_async(prompt.grammar, runner.vocab,
                                             param="tools" if prompt.parses_tools and body.response_format is None
                                             else "response_format")
        params = sampling_params(
            body,
            max_tokens=body.token_limit,
            stop=tuple(body.stops) + prompt.stop,
            logprobs=body.logprobs,
            top_logprobs=body.top_logprobs or 0,
            constraint=constraint,
        )
        gen = runner.generate(GenerationRequest(prompt.text, params, add_special=prompt.add_special,
                                                request_id=request[REQUEST_ID]))
        try:
            d = await next_delta(gen)  # before any header: early failures are real HTTP errors
            choices = [_Choice(i) for i in range(body.n)]
            sse: SSEStream | None = None

            def chunk(index: int, delta: dict[str, Any], finish: str | None = None,
                      logprobs: list | None = None) -> dict[str, Any]:
                c: dict[str, Any] = {
                    "id": cid, "object": "chat.completion.chunk", "created": created, "model": mid,
                    "choices": [{"index": index, "delta": delta, "logprobs": None if logprobs is None else {"content": logprobs},
                                 "finish_reason": finish}],
                }
                if body.include_usage:
                    c["usage"] = None
                return c

            if body.stream:
                sse = SSEStream(request)
                await sse.open()
            try:
                while d is not None:
                    ch = choices[d.index]
                    ch.text += d.text
                    ch.logprobs.extend(d.logprobs)
                    if sse is not None and not prompt.parses_tools and (d.text or d.logprobs or not ch.started):
                        delta: dict[str, Any] = {"content": d.text}
                        if not ch.started:
                            delta = {"role": "assistant", "content": d.text}
                        ch.started = True
                        lp = chat_logprobs(d.logprobs) if body.logprobs else None
                        await sse.send(chunk(d.index, delta, logprobs=lp))
                    if d.finish_reason:
                        ch.finish = d.finish_reason
                        if sse is not None:
                            await _finish_stream_choice(sse, chunk, ch, prompt, body.logprobs)
                    d = await next_delta(gen)
            except ApplianceError as e:
                if sse is None:
                    raise
                return await sse.error(e)
        finally:
            await close(gen, info)
    u = gen.usage
    note_usage(info, u)
    usage = usage_dict(u.prompt_tokens, u.completion_tokens, u.cached_tokens)
    if sse is not None:
        if body.include_usage:
            await sse.send({"id": cid, "object": "chat.completion.chunk", "created": created, "model": mid,
                            "choices": [], "usage": usage})
        await sse.done()
        return sse.response
    out = []
    for ch in choices:
        content, calls = prompt.split(ch.text) if prompt.parses_tools else (ch.text, [])
        message: dict[str, Any] = {"role": "assistant", "content": content}
        finish = ch.finish or "stop"
        if calls:
            message["tool_calls"] = _tool_calls(calls)
            message["content"] = content or None
            finish = "tool_calls"
        out.append({
            "index": ch.index,
            "message": message,
            "logprobs": {"content": chat_logprobs(ch.logprobs)} if body.logprobs else None,
            "finish_reason": finish,
        })
    return web.json_response({
        "id": cid, "object": "chat.completion", "created": created, "model": mid,
        "choices": out, "usage": usage,
    })


async def _finish_stream_choice(sse: SSEStream, chunk: Any, ch: _Choice, prompt: ChatPrompt, want_lp: bool) -> None:
    """The end of one choice: held-back content and tool calls (tools), then its one finish."""
    finish = ch.finish or "stop"
    if prompt.parses_tools:
        content, calls = prompt.split(ch.text)
        first: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else "")}
        await sse.send(chunk(ch.index, first, logprobs=chat_logprobs(ch.logprobs) if want_lp else None))
        for k, call in enumerate(_tool_calls(calls)):
            await sse.send(chunk(ch.index, {"tool_calls": [{
                "index": k, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }]}))
            await sse.send(chunk(ch.index, {"tool_calls": [{
                "index": k, "function": {"arguments": call["function"]["arguments"]},
            }]}))
        if calls:
            finish = "tool_calls"
    await sse.send(chunk(ch.index, {}, finish))
