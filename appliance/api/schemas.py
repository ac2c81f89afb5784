"""Request bodies of the OpenAI routes as pydantic models, with OpenAI's limits.

Unknown fields are ignored (clients send vendor extras); every violation becomes a 400
`invalid_value` naming the offending parameter the way OpenAI does ("messages[0].role").
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from ..errors import InvalidJSON, InvalidRequest
from . import budgets
from .timeouts import read_body
from ..validation import error_path, error_text
from .origins import plain_body_ok

IMAGE_MARKER = "<__media__>"  # libmtmd's default marker (engine/vision.MARKER, without loading llama.cpp)


class _Body(BaseModel):
    """Types are checked as OpenAI checks them: `"stream": "true"`, `"max_tokens": "16"` or
    `true` are 400s naming the field, not coerced (pydantic's lax mode would take them; an
    integer is still a valid number). Python's json reads `NaN` and `Infinity`: refused as "a
    finite number", not reported against a field's range."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, raw: Any) -> Any:
        """An explicit `null` for an optional parameter means its default (other servers agree)."""
        if isinstance(raw, dict) and None in raw.values():
            fields = cls.model_fields
            return {k: v for k, v in raw.items() if v is not None or k not in fields or fields[k].is_required()}
        return raw


# --- chat ----------------------------------------------------------------------------------


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ImageURL(_Body):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Body):
    """An image (api/images.py reads it); in the rendered prompt it is libmtmd's marker."""

    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(_Body):
    name: str
    arguments: str = ""

    @field_validator("arguments")
    @classmethod
    def _json_arguments(cls, v: str) -> str:
        """Templates parse the arguments back: they must be JSON, nested within the budget."""
        if v.strip():
            try:
                obj = json.loads(v)
            except (ValueError, RecursionError):
                raise ValueError("tool call arguments must be a JSON string") from None
            budgets.check_json(obj, "arguments")
        return v


class ToolCall(_Body):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None  # an earlier turn's thinking, for templates that show it

    @model_validator(mode="after")
    def _content_required(self) -> "ChatMessage":
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        return self

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text if isinstance(p, TextPart) else IMAGE_MARKER for p in self.content)

    def image_urls(self, i: int) -> list[tuple[str, str]]:
        """(param, url) of each image part; `i`: this message's index."""
        if not isinstance(self.content, list):
            return []
        return [(f"messages[{i}].content[{j}].image_url.url", p.image_url.url)
                for j, p in enumerate(self.content) if isinstance(p, ImagePart)]

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for the chat template, content flattened to a string."""
        d: dict[str, Any] = {"role": self.role, "content": self.text if self.content is not None else None}
        if self.name:
            d["name"] = self.name
        if self.tool_calls:
            d["tool_calls"] = [tc.model_dump() for tc in self.tool_calls]
        if self.tool_call_id:
            d["tool_call_id"] = self.tool_call_id
        if self.reasoning_content is not None:
            d["reasoning_content"] = self.reasoning_content
        return d


class FunctionDef(_Body):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaSpec(_Body):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema object")
        return self


class StreamOptions(_Body):
    include_usage: bool = False


Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class _Sampling(_Body):
    """What chat and legacy completions share."""

    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    # llama.cpp servers' sampling extensions (null: the model's default, docs/api.md)
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    typical_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    repeat_penalty: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    repeat_last_n: Annotated[int, Field(ge=-1)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _budgets(cls, raw: Any) -> Any:
        """Counts first, before validating a hundred thousand items one by one."""
        if isinstance(raw, dict):
            budgets.check_stop(raw.get("stop"))
            budgets.at_most(raw.get("logit_bias"), budgets.MAX_LOGIT_BIAS, "logit_bias", "logit_bias entries")
            budgets.at_most(raw.get("messages"), budgets.MAX_MESSAGES, "messages", "messages")
            budgets.at_most(raw.get("tools"), budgets.MAX_TOOLS, "tools", "tools")
            prompt = raw.get("prompt")
            if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
                budgets.at_most(prompt, budgets.MAX_PROMPTS, "prompt", "prompts")
        return raw

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and any(not s for s in v):
            raise ValueError("stop sequences must be non-empty strings")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for k in v or {}:
            if not k.lstrip("-").isdigit() or int(k) < 0:
                raise ValueError(f"logit_bias keys must be token ids, got {k!r}")
        return v

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def bias(self) -> dict[int, float]:
        return {int(k): v for k, v in (self.logit_bias or {}).items()}


# What the renderer itself passes to a chat template; clients' chat_template_kwargs may not replace it.
_TEMPLATE_VARIABLES = frozenset({"messages", "tools", "tool_choice", "add_generation_prompt", "bos_token", "eos_token"})


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # extra template variables (enable_thinking ...)
    reasoning_effort: Literal["low", "medium", "high"] | None = None  # gpt-oss
    # thinking into reasoning_content ("separate") or left in content ("inline"); llama-server's
    # names too: "deepseek"/"auto" = separate, "none" = inline. Default: the model's `reasoning`.
    reasoning_format: Literal["separate", "inline", "deepseek", "auto", "none"] | None = None

    @property
    def reasoning_mode(self) -> Literal["separate", "inline"] | None:
        if self.reasoning_format is None:
            return None
        return "inline" if self.reasoning_format in ("inline", "none") else "separate"

    @model_validator(mode="after")
    def _consistent(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:
            raise _ParamError("top_logprobs", "top_logprobs requires logprobs = true")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or []}
            if self.tool_choice.function.name not in names:
                raise _ParamError("tool_choice", f"tool_choice names {self.tool_choice.function.name!r}, which is not in tools")
        elif self.tool_choice == "required" and not self.tools:
            raise _ParamError("tool_choice", "tool_choice 'required' needs tools")
        taken = sorted(set(self.chat_template_kwargs or {}) & _TEMPLATE_VARIABLES)
        if taken:
            raise _ParamError("chat_template_kwargs", f"chat_template_kwargs may not set {', '.join(taken)}")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1)] | Annotated[list[int], Field(min_length=1)] | Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=0)] | None = 16  # OpenAI's default; 0 with echo: score the prompt
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    suffix: str | None = None  # fill-in-the-middle (api/infill.py)

    @property
    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [list(p)]
        return list(p)  # type: ignore[arg-type]


class EmbeddingRequest(_Body):
    model: str
    input: str | Annotated[list[str], Field(min_length=1)] | Annotated[list[int], Field(min_length=1)] | Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _budgets(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            i = raw.get("input")
            if isinstance(i, list) and i and not isinstance(i[0], int):
                budgets.at_most(i, budgets.MAX_EMBEDDING_INPUTS, "input", "inputs")
        return raw

    @property
    def inputs(self) -> list[str | list[int]]:
        i = self.input
        if isinstance(i, str):
            return [i]
        if i and isinstance(i[0], int):
            return [list(i)]
        return list(i)  # type: ignore[arg-type]


# --- parsing -----------------------------------------------------------------------------


class _ParamError(ValueError):
    """A cross-field check that knows which parameter is at fault."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param, self.message = param, message


T = TypeVar("T", bound=BaseModel)


def _message(err: ErrorDetails, param: str) -> str:
    if err["type"] == "missing":
        return f"missing required parameter: {param!r}"
    return f"invalid value for {param!r}: {error_text(err)}" if param else error_text(err)


def parse_body(model: type[T], body: Any) -> T:
    """Validate a decoded JSON body; the first problem becomes a 400 naming its parameter."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        errs = e.errors()
        # Prefer a cross-field check's own parameter; otherwise the first error's location.
        for err in errs:
            ctx_err = (err.get("ctx") or {}).get("error")
            if isinstance(ctx_err, _ParamError):
                raise InvalidRequest(ctx_err.message, param=ctx_err.param) from None
        # Of a union's alternatives, the one that got furthest says most ("content[0].type").
        err = max(errs, key=lambda x: len(error_path(x["loc"])))
        param = error_path(err["loc"])
        raise InvalidRequest(_message(err, param), param=param or None) from None


async def read_json(request: web.Request) -> Any:
    """The body as JSON; another content type only where no cross-site page could have sent
    it (api/origins.py), else 400 invalid_json."""
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json") and not plain_body_ok(request):
        raise InvalidJSON(f"expected Content-Type: application/json, got {ctype or 'none'!r}")
    raw = await read_body(request)
    if len(raw) > OFF_LOOP_BYTES:  # megabytes of JSON: decode and check beside the loop
        return await asyncio.to_thread(decode_json, raw)
    return decode_json(raw)


OFF_LOOP_BYTES = 64 * 1024


def decode_json(raw: bytes) -> Any:
    """Decode and check a body: 400 for bad JSON, nesting over budget, lone surrogates."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidJSON(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidJSON(f"the request body is nested deeper than {budgets.MAX_JSON_DEPTH} levels") from None
    budgets.check_json(body)
    return body
