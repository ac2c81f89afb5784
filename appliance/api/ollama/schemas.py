"""Ollama's request bodies (github.com/ollama/ollama docs/api.md), as pydantic models.

Fields Ollama takes that mean nothing here (`num_ctx`, `num_gpu`, `mirostat` …: the catalog
owns context and offload) are accepted and ignored, as Ollama ignores unknown options.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from ...errors import InvalidRequest
from ...units import parse_duration
from ..schemas import _Body


class Options(_Body):
    """The sampling part of Ollama's `options`."""

    num_predict: int | None = None  # -1: no limit, -2: fill the context
    temperature: float | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_last_n: int | None = None
    seed: int | None = None
    stop: list[str] | str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_penalty: float | None = None


KeepAlive = float | str | None


def keep_alive_seconds(value: KeepAlive) -> float | None:
    """Ollama's keep_alive: seconds or a duration ("5m"); negative: forever; None: not given."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        return math.inf
    if isinstance(value, str) and value.strip().startswith("-"):
        return math.inf
    try:
        return parse_duration(value)
    except ValueError as e:
        raise InvalidRequest(f"invalid keep_alive: {e}", param="keep_alive") from None


class _Generating(_Body):
    model: Annotated[str, Field(min_length=1)]
    stream: bool = True  # Ollama streams unless told not to
    format: Literal["", "json"] | dict[str, Any] | None = None
    options: Options = Options()
    keep_alive: KeepAlive = None
    think: bool | str | None = None


class ToolFunctionCall(_Body):
    name: str
    arguments: dict[str, Any] = {}


class ToolCallIn(_Body):
    function: ToolFunctionCall


class Message(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_name: str | None = None


class ChatRequest(_Generating):
    messages: list[Message] = []
    tools: list[dict[str, Any]] | None = None


class GenerateRequest(_Generating):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[Annotated[int, Field(ge=0)]] | None = None
    raw: bool = False
    images: list[str] | None = None


class EmbedRequest(_Body):
    model: Annotated[str, Field(min_length=1)]
    input: str | Annotated[list[str], Field(min_length=1)]
    truncate: bool = True
    dimensions: Annotated[int, Field(ge=1)] | None = None
    keep_alive: KeepAlive = None

    @property
    def inputs(self) -> list[str | list[int]]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingsRequest(_Body):
    model: Annotated[str, Field(min_length=1)]
    prompt: str
    keep_alive: KeepAlive = None


class ModelRequest(_Body):
    """/api/show, /api/pull: `model`, or `name` as older clients send it."""

    model: str = ""
    name: str = ""
    stream: bool = True

    @field_validator("model")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()

    @property
    def model_name(self) -> str:
        return self.model or self.name
