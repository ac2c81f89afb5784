"""POST /v1/completions: raw prompts (string, list of strings, or token arrays); each prompt
is one Generation of n choices, and choice i of prompt p is choice p*n + i of the response."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..engine.types import Delta, GenerationRequest, TokenLogprob, Usage
from ..errors import InvalidRequest
from . import chunks
from .chunks import Chunk, Head
from .context import CTX_KEY, key_name, resolve_model
from .infill import fim_tokens_for
from .relay import relay
from .sampling import sampling_params
from .schemas import CompletionRequest, parse_body, read_json
from .state import REQUEST_ID


def _echo_text(runner: Any, prompt: str | list[int]) -> str:
    if isinstance(prompt, str):
        return prompt
    detok = getattr(runner, "detokenize", None)
    if detok is None:
        raise InvalidRequest("echo with token-array prompts is not supported", param="echo")
    return str(detok(prompt))


def _fim(runner: Any, mid: str, prompt: str | list[int], suffix: str, params: Any, rid: str) -> GenerationRequest:
    """`suffix`: the prompt is the code before the cursor, the suffix the code after it."""
    if not isinstance(prompt, str):
        raise InvalidRequest("suffix needs text prompts, not token arrays", param="prompt")
    return GenerationRequest(fim_tokens_for(runner, mid, prompt, suffix), params, add_special=False, request_id=rid)


class CompletionChoices:
    """The choices of one completions response, across all its prompts."""

    def __init__(self, head: Head, echoes: list[str], n: int, stream: bool, logprobs: bool) -> None:
        self.head, self.echoes, self.n, self.stream, self.want_lp = head, echoes, n, stream, logprobs
        count = n * len(echoes)
        self.texts = [""] * count
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in range(count)]
        self.finishes = ["stop"] * count
        self.started = [False] * count

    def add(self, generation: int, d: Delta) -> list[Chunk]:
        i = generation * self.n + d.index
        text = d.text
        if not self.started[i]:
            text = self.echoes[generation] + text
            self.started[i] = True
        out = []
        if self.stream:
            lp = chunks.completion_logprobs(d.logprobs, len(self.texts[i])) if self.want_lp else None
            if text or lp:
                out.append(chunks.completion_chunk(self.head, i, text, None, lp))
            if d.finish_reason:
                out.append(chunks.completion_chunk(self.head, i, "", d.finish_reason))
        self.texts[i] += text
        self.logprobs[i].extend(d.logprobs)
        if d.finish_reason:
            self.finishes[i] = d.finish_reason
        return out

    def response(self, usage: Usage) -> dict[str, Any]:
        choices = [
            {"index": i, "text": text, "finish_reason": self.finishes[i],
             "logprobs": chunks.completion_logprobs(self.logprobs[i], 0) if self.want_lp else None}
            for i, text in enumerate(self.texts)
        ]
        return chunks.completion_response(self.head, choices, usage)


async def completions(request: web.Request) -> web.StreamResponse:
    body = parse_body(CompletionRequest, await read_json(request))
    mid, _ = resolve_model(request, body.model)
    head = Head.new("completion", mid, body.include_usage)
    want_lp = body.logprobs is not None
    params = sampling_params(body, logprobs=want_lp, top_logprobs=body.logprobs or 0)
    rid = request[REQUEST_ID]
    async with request.app[CTX_KEY].backend.lease(mid, key_name(request), slots=body.n) as runner:
        echoes = [_echo_text(runner, p) if body.echo else "" for p in body.prompts]  # refused before streaming
        choices = CompletionChoices(head, echoes, body.n, body.stream, want_lp)
        reqs = [_fim(runner, mid, p, body.suffix, params, rid) if body.suffix else GenerationRequest(p, params, request_id=rid)
                for p in body.prompts]
        starts = [lambda r=r: runner.generate(r) for r in reqs]
        return await relay(request, head, body.stream, choices, starts)
