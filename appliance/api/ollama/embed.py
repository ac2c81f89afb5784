"""POST /api/embed (`input`: a string or a list; `embeddings`: one vector per input) and the
older POST /api/embeddings (`prompt` -> `embedding`), on models with `embedding = true`."""

from __future__ import annotations

import time

from aiohttp import web

from ...errors import InvalidRequest
from ..context import CTX_KEY
from ..embeddings import embed_inputs
from ..schemas import parse_body, read_json
from .convert import catalog_name
from .generate import apply_keep_alive
from .schemas import EmbeddingsRequest, EmbedRequest


def _name(request: web.Request, name: str) -> str:
    return catalog_name(request.app[CTX_KEY].directory.catalog, name)


async def embed(request: web.Request) -> web.Response:
    body = parse_body(EmbedRequest, await read_json(request))
    t0 = time.monotonic_ns()
    mid, result = await embed_inputs(request, _name(request, body.model), body.inputs)
    apply_keep_alive(request, mid, body.keep_alive)
    if body.dimensions is not None and body.dimensions != len(result.vectors[0]):
        raise InvalidRequest(f"the model {mid!r} makes {len(result.vectors[0])}-dimensional embeddings",
                             param="dimensions")
    return web.json_response({"model": mid, "embeddings": result.vectors,
                              "total_duration": time.monotonic_ns() - t0, "load_duration": 0,
                              "prompt_eval_count": result.prompt_tokens})


async def embeddings(request: web.Request) -> web.Response:
    body = parse_body(EmbeddingsRequest, await read_json(request))
    mid, result = await embed_inputs(request, _name(request, body.model), [body.prompt])
    apply_keep_alive(request, mid, body.keep_alive)
    return web.json_response({"embedding": result.vectors[0]})
