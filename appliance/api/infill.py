"""POST /infill (llama-server's code-completion endpoint, which editor plugins such as
llama.vim and llama.vscode call) and the FIM prompts `suffix` on /v1/completions uses.

Body as llama-server takes it: `input_prefix`, `input_suffix`, `input_extra` (other files,
`[{"filename", "text"}]`), `prompt` (text already typed in the middle), `n_predict` or
`max_tokens`, the usual sampling fields, `stream`. The answer is llama-server's shape:
`{"content", "stop", "stop_type", "tokens_predicted", "tokens_evaluated", "model"}`; streamed,
each event carries a piece of `content` with `stop: false` and the last one `stop: true`
(server-sent events without OpenAI's `[DONE]`).
"""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import Field, model_validator

from ..engine.types import Delta, GenerationRequest, Usage
from .chunks import Chunk
from .context import CTX_KEY, key_name, resolve_model
from .relay import relay
from .sampling import sampling_params
from .schemas import _Body, _Sampling, parse_body, read_json
from .sse import PlainSSEStream
from .state import REQUEST_ID


class ExtraFile(_Body):
    filename: str = ""
    text: str


class InfillRequest(_Sampling):
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[ExtraFile] = []
    prompt: str = ""
    n_predict: Annotated[int, Field(ge=-1)] | None = None

    @model_validator(mode="after")
    def _n_predict(self) -> "InfillRequest":
        if self.max_tokens is None and self.n_predict not in (None, -1, 0):
            self.max_tokens = self.n_predict
        return self


_STOP_TYPE = {"stop": "eos", "length": "limit"}


class InfillChoices:
    """One choice in llama-server's shape; also the relay's `head` (its last event)."""

    include_usage = True

    def __init__(self, model: str, stream: bool) -> None:
        self.model, self.stream = model, stream
        self.text, self.finish = "", "stop"

    def add(self, generation: int, d: Delta) -> list[Chunk]:
        self.text += d.text
        if d.finish_reason:
            self.finish = d.finish_reason
        return [{"content": d.text, "stop": False}] if self.stream and d.text else []

    def usage_chunk(self, usage: Usage) -> Chunk:
        return {**self.response(usage), "content": ""}

    def response(self, usage: Usage) -> dict[str, Any]:
        return {"content": self.text, "model": self.model, "stop": True,
                "stop_type": _STOP_TYPE.get(self.finish, self.finish),
                "tokens_predicted": usage.completion_tokens, "tokens_evaluated": usage.prompt_tokens}


async def infill(request: web.Request) -> web.StreamResponse:
    body = parse_body(InfillRequest, await read_json(request))
    mid, cfg = resolve_model(request, body.model)
    params = sampling_params(body, cfg)
    async with request.app[CTX_KEY].backend.lease(mid, key_name(request), slots=1) as runner:
        tokens = runner.fim_prompt(body.input_prefix, body.input_suffix, body.prompt,
                                   [(f.filename, f.text) for f in body.input_extra], param="input_suffix")
        req = GenerationRequest(tokens, params, add_special=False, request_id=request[REQUEST_ID])
        choices = InfillChoices(mid, body.stream)
        return await relay(request, choices, body.stream, choices,
                           [lambda: runner.generate(req)], stream_type=PlainSSEStream)
