"""POST /v1/responses: OpenAI's Responses API over the chat path (template, tools, grammar
for `text.format`), with `previous_response_id` kept in memory for the key that made it."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..chat import chat_generation
from ..context import CTX_KEY, key_name, resolve_model
from ..model_defaults import with_model_defaults
from ..relay import relay
from ..schemas import ChatCompletionRequest, parse_body, read_json
from ..sse import EventSSEStream
from ..state import REQUEST_ID
from .history import ResponseHistory
from .schemas import ResponsesRequest, chat_fields
from .shapes import ResponseChoices, as_messages

HISTORY_KEY = web.AppKey("appliance_responses", ResponseHistory)


async def responses(request: web.Request) -> web.StreamResponse:
    body = parse_body(ResponsesRequest, await read_json(request))
    mid, cfg = resolve_model(request, body.model)
    history = request.app[HISTORY_KEY]
    owner = key_name(request)
    before = history.get(body.previous_response_id, owner) if body.previous_response_id else []
    raw, convo = chat_fields(body, before)
    oa = with_model_defaults(parse_body(ChatCompletionRequest, raw), cfg)

    def keep(response_id: str, items: list[dict[str, Any]]) -> None:
        if body.store:
            history.put(response_id, owner, convo + as_messages(items))

    async with request.app[CTX_KEY].backend.lease(mid, owner, slots=1) as runner:
        prompt, req = await chat_generation(runner, oa, cfg, request[REQUEST_ID])
        choices = ResponseChoices(body, mid, prompt, body.stream, keep)
        return await relay(request, choices, body.stream, choices,
                           [lambda: runner.generate(req)], stream_type=EventSSEStream)


def add_responses_routes(app: web.Application) -> None:
    app[HISTORY_KEY] = ResponseHistory()
    app.router.add_post("/v1/responses", responses)
