"""POST /tokenize and /detokenize (llama-server's), with the model named as everywhere else.

/tokenize: `{"model", "content", "add_special": false, "with_pieces": false}` ->
`{"tokens": [ids]}` (with_pieces: `[{"id", "piece"}]`, piece as text, or as a list of bytes
when it is not whole UTF-8). /detokenize: `{"model", "tokens"}` -> `{"content"}`. They need
the model loaded (its vocabulary) but take no slot's work; they do count as requests.
"""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field

from ..engine.protocol import ServingRunner
from .context import CTX_KEY, key_name, resolve_model
from .schemas import _Body, parse_body, read_json


class TokenizeRequest(_Body):
    model: str
    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(_Body):
    model: str
    tokens: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=1_000_000)]


def _piece(runner: ServingRunner, tok: int) -> str | list[int]:
    raw = runner.piece(tok)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)


async def tokenize(request: web.Request) -> web.Response:
    body = parse_body(TokenizeRequest, await read_json(request))
    mid, _ = resolve_model(request, body.model)
    async with request.app[CTX_KEY].backend.lease(mid, key_name(request), slots=1) as runner:
        ids = runner.tokenize(body.content, body.add_special, body.parse_special)
        if body.with_pieces:
            return web.json_response({"tokens": [{"id": t, "piece": _piece(runner, t)} for t in ids]})
    return web.json_response({"tokens": ids})


async def detokenize(request: web.Request) -> web.Response:
    body = parse_body(DetokenizeRequest, await read_json(request))
    mid, _ = resolve_model(request, body.model)
    async with request.app[CTX_KEY].backend.lease(mid, key_name(request), slots=1) as runner:
        return web.json_response({"content": runner.detokenize(body.tokens)})
