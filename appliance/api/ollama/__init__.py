"""Ollama's API under /api/ on the same port and keys as /v1 (editor plugins, chat front
ends and scripts built for Ollama): version, tags, show, ps, chat, generate, embed,
embeddings, pull. Errors here are Ollama's `{"error": "message"}` (api/errors.py)."""

from __future__ import annotations

from typing import Any, Callable

from aiohttp import web

from .embed import embed, embeddings
from .generate import chat, generate
from .models import ps, show, tags, version
from .pull import PULLER_KEY, pull, store_puller

PREFIX = "/api/"


def add_ollama_routes(app: web.Application, store: Any = None, catalog: Callable[[], Any] | None = None) -> None:
    """Mount the routes; with a store (and the live catalog), /api/pull pulls into it."""
    r = app.router
    r.add_get("/api/version", version)
    r.add_get("/api/tags", tags)
    r.add_post("/api/show", show)
    r.add_get("/api/ps", ps)
    r.add_post("/api/chat", chat)
    r.add_post("/api/generate", generate)
    r.add_post("/api/embed", embed)
    r.add_post("/api/embeddings", embeddings)
    r.add_post("/api/pull", pull)
    if store is not None and catalog is not None:
        app[PULLER_KEY] = store_puller(store, catalog)
