"""POST /v1/completions: raw prompts (string, list of strings, or token arrays); each prompt
is one Generation of n choices, and choice i of prompt p is choice p*n + i of the response."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..engine.protocol import ServingRunner
from ..engine.types import Delta, GenerationRequest, SamplingParams, TokenLogprob, Usage
from ..errors import InvalidRequest
from . import chunks
from .chunks import Chunk, Head
from .context import CTX_KEY, key_name, resolve_model
from .model_defaults import with_model_defaults
from .relay import relay
from .sampling import sampling_params
from .schemas import CompletionRequest, parse_body, read_json
from .state import REQUEST_ID, request_facts


def _echo_text(runner: ServingRunner, prompt: str | list[int]) -> str:
    return prompt if isinstance(prompt, str) else runner.detokenize(prompt)


def _fim(runner: ServingRunner, prompt: str | list[int], suffix: str, params: SamplingParams,
         rid: str) -> GenerationRequest:
    """`suffix`: the prompt is the code before the cursor, the suffix the code after it."""
    if not isinstance(prompt, str):
        raise InvalidRequest("suffix needs text prompts, not token arrays", param="prompt")
    return GenerationRequest(runner.fim_prompt(prompt, suffix), params, add_special=False, request_id=rid)


class CompletionChoices:
    """The choices of one completions response, across all its prompts."""

    def __init__(self, head: Head, echoes: list[str], n: int, stream: bool, logprobs: bool,
                 echo_logprobs: list[list[TokenLogprob]] | None = None) -> None:
        self.head, self.echoes, self.n, self.stream, self.want_lp = head, echoes, n, stream, logprobs
        self.echo_lps = echo_logprobs or [[] for _ in echoes]  # each echoed prompt's token logprobs
        count = n * len(echoes)
        self.texts = [""] * count
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in range(count)]
        self.finishes = ["stop"] * count
        self.started = [False] * count

    def add(self, generation: int, d: Delta) -> list[Chunk]:
        i = generation * self.n + d.index
        text, lps, first = d.text, d.logprobs, False
        if not self.started[i]:
            text = self.echoes[generation] + text
            lps, first = self.echo_lps[generation] + lps, bool(self.echo_lps[generation])
            self.started[i] = True
        out = []
        if self.stream:
            lp = chunks.completion_logprobs(lps, len(self.texts[i]), first) if self.want_lp else None
            if text or lps:  # the first bytes of a character: nothing to send yet
                out.append(chunks.completion_chunk(self.head, i, text, None, lp))
            if d.finish_reason:
                out.append(chunks.completion_chunk(self.head, i, "", d.finish_reason))
        self.texts[i] += text
        self.logprobs[i].extend(lps)
        if d.finish_reason:
            self.finishes[i] = d.finish_reason
        return out

    def response(self, usage: Usage) -> dict[str, Any]:
        choices = [
            {"index": i, "text": text, "finish_reason": self.finishes[i],
             "logprobs": chunks.completion_logprobs(self.logprobs[i], 0, bool(self.echo_lps[i // self.n]))
             if self.want_lp else None}
            for i, text in enumerate(self.texts)
        ]
        return chunks.completion_response(self.head, choices, usage)

    def prompt_only(self, prompt_tokens: int) -> dict[str, Any]:
        """max_tokens 0: each choice is its echoed prompt (and that prompt's logprobs), nothing generated."""
        for g in range(len(self.echoes)):
            for k in range(self.n):
                self.add(g, Delta(k, "", [], "length"))
        return self.response(Usage(prompt_tokens=prompt_tokens))


async def completions(request: web.Request) -> web.StreamResponse:
    body = parse_body(CompletionRequest, await read_json(request))
    mid, cfg = resolve_model(request, body.model)
    body = with_model_defaults(body, cfg)
    head = Head.new("completion", mid, body.include_usage)
    want_lp = body.logprobs is not None
    params = sampling_params(body, cfg, logprobs=want_lp, top_logprobs=body.logprobs or 0)
    rid = request[REQUEST_ID]
    async with request.app[CTX_KEY].backend.lease(mid, key_name(request), slots=body.n) as runner:
        echoes = [_echo_text(runner, p) if body.echo else "" for p in body.prompts]  # refused before streaming
        echo_lps = [await runner.prompt_logprobs(p, body.logprobs or 0) for p in body.prompts] \
            if body.echo and want_lp else None
        choices = CompletionChoices(head, echoes, body.n, body.stream, want_lp, echo_lps)
        if body.max_tokens == 0:  # scoring: the prompt's logprobs, nothing generated
            if body.stream:
                raise InvalidRequest("max_tokens 0 returns the prompt only; it cannot stream", param="stream")
            n_prompt = sum(len(x) for x in echo_lps) if echo_lps else sum(
                len(p) if isinstance(p, list) else len(runner.tokenize(p, True, True)) for p in body.prompts)
            request_facts(request).prompt_tokens = n_prompt
            return web.json_response(choices.prompt_only(n_prompt))
        reqs = [_fim(runner, p, body.suffix, params, rid) if body.suffix else GenerationRequest(p, params, request_id=rid)
                for p in body.prompts]
        starts = [lambda r=r: runner.generate(r) for r in reqs]
        return await relay(request, head, body.stream, choices, starts)
