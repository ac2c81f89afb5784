"""POST /v1/completions: raw prompts (string, list of strings, or token arrays)."""

from __future__ import annotations

import secrets
import time
from typing import Any

from aiohttp import web

from ..engine.types import GenerationRequest
from ..errors import ApplianceError, InvalidRequest
from .context import CTX_KEY, check_n, key_name, resolve_model
from .generation import close, completion_logprobs, next_delta, note_usage, sampling_params, usage_dict
from .schemas import CompletionRequest, parse_body, read_json
from .sse import SSEStream
from .state import REQUEST_ID, request_info


def _echo_text(runner: Any, prompt: str | list[int]) -> str:
    if isinstance(prompt, str):
        return prompt
    detok = getattr(runner, "detokenize", None)
    if detok is None:
        raise InvalidRequest("echo with token-array prompts is not supported", param="echo")
    return detok(prompt)


async def completions(request: web.Request) -> web.StreamResponse:
    body = parse_body(CompletionRequest, await read_json(request))
    mid, cfg = resolve_model(request, body.model)
    check_n(body.n, cfg, mid)
    info = request_info(request)
    info["stream"] = body.stream
    want_lp = body.logprobs is not None
    params = sampling_params(body, logprobs=want_lp, top_logprobs=body.logprobs or 0)
    rid = request[REQUEST_ID]
    cid, created = "cmpl-" + secrets.token_hex(12), int(time.time())
    prompts = body.prompts
    n = body.n

    def chunk(index: int, text: str, finish: str | None, lp: dict | None) -> dict[str, Any]:
        c: dict[str, Any] = {
            "id": cid, "object": "text_completion", "created": created, "model": mid,
            "choices": [{"index": index, "text": text, "logprobs": lp, "finish_reason": finish}],
        }
        if body.include_usage:
            c["usage"] = None
        return c

    async with request.app[CTX_KEY].backend.lease(mid, key_name(request), slots=n) as runner:
        sse: SSEStream | None = None
        texts = [""] * (n * len(prompts))
        lps: list[list] = [[] for _ in texts]
        finishes: list[str] = ["stop"] * len(texts)
        for pi, prompt in enumerate(prompts):
            echo = _echo_text(runner, prompt) if body.echo else ""
            gen = runner.generate(GenerationRequest(prompt, params, request_id=rid))
            try:
                started = [False] * n
                try:
                    d = await next_delta(gen)  # before any header: early failures are real HTTP errors
                    if body.stream and sse is None:
                        sse = SSEStream(request)
                        await sse.open()
                    while d is not None:
                        i = pi * n + d.index
                        text = d.text
                        if echo and not started[d.index]:
                            text = echo + text
                        started[d.index] = True
                        if sse is not None:
                            lp = completion_logprobs(d.logprobs, len(texts[i])) if want_lp else None
                            if text or lp:
                                await sse.send(chunk(i, text, None, lp))
                            if d.finish_reason:
                                await sse.send(chunk(i, "", d.finish_reason, None))
                        texts[i] += text
                        lps[i].extend(d.logprobs)
                        if d.finish_reason:
                            finishes[i] = d.finish_reason
                        d = await next_delta(gen)
                except ApplianceError as e:
                    if sse is None:
                        raise
                    return await sse.error(e)
            finally:
                await close(gen, info)
            note_usage(info, gen.usage)
    usage = usage_dict(info["prompt_tokens"], info["completion_tokens"])
    if sse is not None:
        if body.include_usage:
            await sse.send({"id": cid, "object": "text_completion", "created": created, "model": mid,
                            "choices": [], "usage": usage})
        await sse.done()
        return sse.response
    choices = [
        {
            "index": i,
            "text": texts[i],
            "logprobs": completion_logprobs(lps[i], 0) if want_lp else None,
            "finish_reason": finishes[i],
        }
        for i in range(len(texts))
    ]
    return web.json_response(
        {"id": cid, "object": "text_completion", "created": created, "model": mid, "choices": choices, "usage": usage}
    )
