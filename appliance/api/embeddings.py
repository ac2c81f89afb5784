"""POST /v1/embeddings: only models marked `embedding = true` in the catalog."""

from __future__ import annotations

import base64
import sys
from array import array
from typing import Any

from aiohttp import web

from ..errors import InvalidRequest
from ..engine.types import EmbeddingResult
from .context import CTX_KEY, key_name, resolve_model
from .schemas import EmbeddingRequest, parse_body, read_json
from .state import request_facts


def encode_base64(vector: list[float]) -> str:
    """float32 little-endian, what the openai client decodes (it asks for base64 by default)."""
    a = array("f", vector)
    if sys.byteorder != "little":
        a.byteswap()
    return base64.b64encode(a.tobytes()).decode("ascii")


async def embed_inputs(request: web.Request, model: str, inputs: list[str | list[int]]) -> tuple[str, EmbeddingResult]:
    """Admit the request for `model` (an embedding model) and embed `inputs` (also for
    Ollama's /api/embed and /api/embeddings)."""
    mid, cfg = resolve_model(request, model)
    if not cfg.embedding:
        raise InvalidRequest(f"the model {mid!r} does not serve embeddings (embedding = false in models.toml)", param="model")
    async with request.app[CTX_KEY].backend.lease(mid, key_name(request), slots=1) as runner:
        result = await runner.embed(inputs)
    request_facts(request).prompt_tokens = result.prompt_tokens
    return mid, result


async def embeddings(request: web.Request) -> web.Response:
    body = parse_body(EmbeddingRequest, await read_json(request))
    mid, result = await embed_inputs(request, body.model, body.inputs)
    if body.dimensions is not None and body.dimensions != len(result.vectors[0]):
        raise InvalidRequest(
            f"the model {mid!r} makes {len(result.vectors[0])}-dimensional embeddings; dimensions cannot change that",
            param="dimensions",
        )
    data: list[dict[str, Any]] = [
        {
            "object": "embedding",
            "index": i,
            "embedding": encode_base64(v) if body.encoding_format == "base64" else v,
        }
        for i, v in enumerate(result.vectors)
    ]
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": mid,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }
    )
