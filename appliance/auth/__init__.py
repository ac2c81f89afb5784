"""API keys: the keys file (hashed tokens, scopes, model lists, rates) and per-key rate limits."""

from .keys import (
    ADMIN,
    INFERENCE,
    SCOPES,
    TOKEN_PREFIX,
    ApiKey,
    Keyring,
    create_key,
    hash_token,
    load_keys,
    revoke_key,
)
from .ratelimit import RateLimiter

__all__ = [
    "ADMIN",
    "INFERENCE",
    "SCOPES",
    "TOKEN_PREFIX",
    "ApiKey",
    "Keyring",
    "RateLimiter",
    "create_key",
    "hash_token",
    "load_keys",
    "revoke_key",
]
