"""Per-model request defaults from models.toml (`system`, `max_tokens`, `stop`): what Ollama's
Modelfile SYSTEM and PARAMETER give, applied only where the request leaves a field out (or
sends null), so a client can always override them."""

from __future__ import annotations

from typing import TypeVar

from ..config import ModelConfig
from .schemas import ChatCompletionRequest, ChatMessage, _Sampling

B = TypeVar("B", bound=_Sampling)


def with_model_defaults(body: B, cfg: ModelConfig) -> B:
    """`body` with the model's defaults filled in where it has none."""
    update: dict[str, object] = {}
    chat = isinstance(body, ChatCompletionRequest)
    given = body.max_tokens if "max_tokens" in body.model_fields_set else None
    if chat:
        given = given or body.max_completion_tokens  # type: ignore[attr-defined]
    if cfg.max_tokens is not None and given is None:
        update["max_tokens"] = cfg.max_tokens
    if cfg.stop and body.stop is None:
        update["stop"] = list(cfg.stop)
    if cfg.system and chat and not any(m.role in ("system", "developer") for m in body.messages):  # type: ignore[attr-defined]
        update["messages"] = [ChatMessage(role="system", content=cfg.system), *body.messages]  # type: ignore[attr-defined]
    return body.model_copy(update=update) if update else body
