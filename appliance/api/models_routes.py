"""GET /v1/models and /v1/models/{id}: only what the caller's key may use."""

from __future__ import annotations

from aiohttp import web

from .capabilities import capabilities, card_extras
from .context import CTX_KEY, api_key


async def list_models(request: web.Request) -> web.Response:
    d = request.app[CTX_KEY].directory
    key = api_key(request)
    data = [d.card(mid, cfg, key) for mid, cfg in d.visible(key)]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    """One model's card plus its capabilities (chat, tools, reasoning, embeddings, vision, fim)
    read from its GGUF when it is in the store."""
    d = request.app[CTX_KEY].directory
    key = api_key(request)
    mid, cfg = d.resolve(request.match_info["model"], key)
    caps, facts = await capabilities(d, mid, cfg)
    return web.json_response({**d.card(mid, cfg, key), **card_extras(caps, facts)})


def add_model_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", list_models)
    # {model:.+}: ids may contain '/' (e.g. "org/name"), as OpenAI's fine-tune ids contain ':'.
    app.router.add_get("/v1/models/{model:.+}", get_model)
