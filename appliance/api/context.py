"""The objects route handlers share, stored on the app under one typed key."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..auth import ApiKey, Keyring, RateLimiter
from ..config import ModelConfig
from .backend import Backend
from .directory import ModelDirectory
from .state import API_KEY, request_facts


@dataclass
class ApiContext:
    directory: ModelDirectory
    backend: Backend
    limiter: RateLimiter


CTX_KEY = web.AppKey("appliance_api", ApiContext)
KEYRING_KEY = web.AppKey("keyring", Keyring)

ANONYMOUS = "anonymous"  # the fairness bucket of requests in open (no keys) mode


def api_key(request: web.Request) -> ApiKey | None:
    return request.get(API_KEY)


def key_name(request: web.Request) -> str:
    key = api_key(request)
    return key.name if key is not None else ANONYMOUS


def resolve_model(request: web.Request, name: str) -> tuple[str, ModelConfig]:
    """Admit an inference request for `name`: 404/403 unless the key may use it, then spend
    one request of the key's `rpm` (only admitted inference requests count)."""
    ctx = request.app[CTX_KEY]
    key = api_key(request)
    mid, cfg = ctx.directory.resolve(name, key)
    request_facts(request).model = mid
    if key is not None:
        ctx.limiter.take(key.name, key.rpm)
    return mid, cfg
