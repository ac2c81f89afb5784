"""The objects route handlers share, stored on the app under one typed key."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..auth import ApiKey, Keyring
from ..config import ModelConfig
from .backend import Backend
from .directory import ModelDirectory
from .state import API_KEY, request_facts


@dataclass
class ApiContext:
    directory: ModelDirectory
    backend: Backend


CTX_KEY = web.AppKey("appliance_api", ApiContext)
KEYRING_KEY = web.AppKey("keyring", Keyring)

ANONYMOUS = "anonymous"  # the fairness bucket of requests in open (no keys) mode


def api_key(request: web.Request) -> ApiKey | None:
    return request.get(API_KEY)


def key_name(request: web.Request) -> str:
    key = api_key(request)
    return key.name if key is not None else ANONYMOUS


def resolve_model(request: web.Request, name: str) -> tuple[str, ModelConfig]:
    mid, cfg = request.app[CTX_KEY].directory.resolve(name, api_key(request))
    request_facts(request).model = mid
    return mid, cfg
