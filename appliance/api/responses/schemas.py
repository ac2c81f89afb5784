"""The Responses API's request (`POST /v1/responses`) and its translation into the chat body
the rest of the API serves: input items -> chat messages, function tools -> chat tools,
`text.format` -> response_format, `max_output_tokens` -> max_tokens."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from ...errors import InvalidRequest
from ..schemas import _Body


class TextFormat(_Body):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str = "output"
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(_Body):
    format: TextFormat = TextFormat()


class ResponsesRequest(_Body):
    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] = []
    tool_choice: str | dict[str, Any] = "auto"
    parallel_tool_calls: bool = True
    text: TextConfig = TextConfig()
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    stream: bool = False
    previous_response_id: str | None = None
    store: bool = True
    metadata: dict[str, str] | None = None
    seed: int | None = None  # not OpenAI's, as /v1/chat takes it
    reasoning: dict[str, Any] | None = None  # {"effort": "low" | "medium" | "high"} (gpt-oss)


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or text parts (input_text / output_text)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or a list of parts", param=f"{where}.content")
    out = []
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            out.append(str(part.get("text", "")))
        else:
            raise InvalidRequest(f"content parts of type {kind!r} are not supported (text only)",
                                 param=f"{where}.content[{k}].type")
    return "".join(out)


def input_messages(items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input items as chat messages; consecutive function calls become one assistant turn."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise InvalidRequest(f"invalid role {role!r}", param=f"{where}.role")
            out.append({"role": role, "content": _text(item.get("content", ""), where)})
        elif kind == "function_call":
            call = {"id": str(item.get("call_id") or item.get("id") or f"call_{i}"), "type": "function",
                    "function": {"name": str(item.get("name", "")), "arguments": str(item.get("arguments", ""))}}
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls") and not out[-1]["content"]:
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output", "")
            out.append({"role": "tool", "tool_call_id": str(item.get("call_id", "")),
                        "content": output if isinstance(output, str) else _text(output, where)})
        elif kind == "reasoning":
            continue  # a previous turn's reasoning summary: not fed back to the template
        else:
            raise InvalidRequest(f"input items of type {kind!r} are not supported", param=f"{where}.type")
    return out


def chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, t in enumerate(tools):
        if t.get("type") != "function":
            raise InvalidRequest(f"only function tools are supported, not {t.get('type')!r}", param=f"tools[{i}].type")
        fn = {k: t[k] for k in ("name", "description", "parameters", "strict") if t.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out


def chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name", "")}}
    return choice


def response_format(fmt: TextFormat) -> dict[str, Any] | None:
    if fmt.type == "json_schema":
        spec: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_ or {}}
        if fmt.strict is not None:
            spec["strict"] = fmt.strict
        return {"type": "json_schema", "json_schema": spec}
    return {"type": fmt.type} if fmt.type == "json_object" else None


def chat_fields(body: ResponsesRequest, history: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the raw chat body, the conversation without instructions, to keep for the next turn)."""
    convo = history + input_messages(body.input)
    messages = ([{"role": "system", "content": body.instructions}] if body.instructions else []) + convo
    raw: dict[str, Any] = {"model": body.model, "messages": messages}
    for name in ("temperature", "top_p", "seed"):
        if getattr(body, name) is not None:
            raw[name] = getattr(body, name)
    if body.max_output_tokens is not None:
        raw["max_tokens"] = body.max_output_tokens
    if body.tools:
        raw["tools"] = chat_tools(body.tools)
        raw["tool_choice"] = chat_tool_choice(body.tool_choice)
    effort = (body.reasoning or {}).get("effort")
    if effort is not None:
        raw["reasoning_effort"] = effort
    rf = response_format(body.text.format)
    if rf is not None:
        raw["response_format"] = rf
    return raw, convo
