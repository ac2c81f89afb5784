"""Messages + tools + response_format -> the prompt, grammar and tool-call parser of one
chat request. Adapter over the engine's chat rendering (appliance.engine.chat when present).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import InvalidRequest
from .schemas import ChatCompletionRequest

ToolCalls = list[tuple[str, str]]  # (name, arguments as a JSON string)


@dataclass
class ChatPrompt:
    text: str
    add_special: bool = False
    stop: tuple[str, ...] = ()
    grammar: str | None = None
    grammar_triggers: tuple[str, ...] = ()
    parses_tools: bool = False
    parse: Callable[[str], tuple[str, ToolCalls]] | None = field(default=None, repr=False)

    def split(self, text: str) -> tuple[str, ToolCalls]:
        """(content, tool calls) of one choice's whole output."""
        if self.parse is None:
            return text, []
        return self.parse(text)


MAX_SCHEMA_BYTES = 64 * 1024  # grammar cost grows with the schema (DESIGN: cap schema size)


def schema_grammar(schema: dict[str, Any], param: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    raw = json.dumps(schema)
    if len(raw) > MAX_SCHEMA_BYTES:
        raise InvalidRequest(f"the JSON schema is over {MAX_SCHEMA_BYTES} bytes", param=param)
    try:
        return json_schema_to_gbnf(raw)
    except Exception as e:  # the converter raises plain exceptions on unsupported schemas
        raise InvalidRequest(f"unsupported JSON schema: {e}", param=param) from None


def json_object_grammar() -> str:
    from llama_cpp.llama_grammar import JSON_GBNF

    return JSON_GBNF


def response_grammar(body: ChatCompletionRequest) -> str | None:
    rf = body.response_format
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return json_object_grammar()
    assert rf.json_schema is not None
    schema = rf.json_schema.schema_ or {"type": "object"}
    return schema_grammar(schema, "response_format.json_schema.schema")


def render(runner: Any, body: ChatCompletionRequest) -> ChatPrompt:
    from ..engine import chat as engine_chat  # the engine's renderer and tool-call formats

    return engine_chat_prompt(engine_chat, runner, body)


def engine_chat_prompt(engine_chat: Any, runner: Any, body: ChatCompletionRequest) -> ChatPrompt:
    raise NotImplementedError
