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


def response_grammar(body: ChatCompletionRequest) -> str | None:
    from ..engine.grammar import grammar_for_response_format

    rf = body.response_format
    if rf is None:
        return None
    return grammar_for_response_format(rf.model_dump(by_alias=True, exclude_none=True))


TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
_TOOL_RE = re.compile(re.escape(TOOL_OPEN) + r"\s*(\{.*?\})\s*" + re.escape(TOOL_CLOSE), re.S)


def _tools_system_text(tools: list[dict[str, Any]]) -> str:
    specs = "\n".join(json.dumps(t["function"]) for t in tools)
    return (
        "You may call functions. Available functions:\n" + specs + "\n"
        f'To call one, reply with {TOOL_OPEN}{{"name": NAME, "arguments": {{...}}}}{TOOL_CLOSE}.'
    )


def _parse_tool_calls(text: str) -> tuple[str, ToolCalls]:
    calls: ToolCalls = []
    for m in _TOOL_RE.finditer(text):
        try:
            obj = json.loads(m.group(1))
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("name"), str):
            calls.append((obj["name"], json.dumps(obj.get("arguments", {}))))
    if not calls:
        return text, []
    return _TOOL_RE.sub("", text).strip(), calls


def _tool_grammar(tools: list[dict[str, Any]], only: str | None) -> str:
    """GBNF for `<tool_call>{"name": ..., "arguments": ...}</tool_call>` over the allowed tools."""
    from ..engine.grammar import schema_to_gbnf

    alts = []
    for t in tools:
        fn = t["function"]
        if only is not None and fn["name"] != only:
            continue
        alts.append({
            "type": "object",
            "properties": {"name": {"const": fn["name"]}, "arguments": fn.get("parameters") or {"type": "object"}},
            "required": ["name", "arguments"],
        })
    schema = alts[0] if len(alts) == 1 else {"oneOf": alts}
    gbnf = schema_to_gbnf(schema, param="tools")
    gbnf = gbnf.replace("root ::=", "call ::=", 1)
    return f'root ::= "{TOOL_OPEN}" call "{TOOL_CLOSE}"\n' + gbnf


def _render_template(runner: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> tuple[str, bool]:
    """The model's Jinja chat template, or a plain transcript for models without one."""
    template = getattr(runner, "chat_template", None)
    if template:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        fmt = Jinja2ChatFormatter(template, eos_token=runner.eos_text, bos_token=runner.bos_text,
                                  add_generation_prompt=True)
        text = fmt(messages=messages, tools=tools).prompt
        # Templates that emit the BOS themselves must not get a second one from the tokenizer.
        bos = runner.bos_text
        return text, not (bos and text.startswith(bos))
    lines = [f"{m['role']}: {m.get('content') or ''}" for m in messages]
    return "\n".join(lines) + "\nassistant:", True


def render(runner: Any, body: ChatCompletionRequest) -> ChatPrompt:
    messages = [m.as_dict() for m in body.messages]
    use_tools = bool(body.tools) and body.tool_choice != "none"
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []] if use_tools else None
    if tools:
        messages = [{"role": "system", "content": _tools_system_text(tools)}] + messages
    text, add_special = _render_template(runner, messages, tools)
    grammar = response_grammar(body)
    triggers: tuple[str, ...] = ()
    stop: tuple[str, ...] = () if getattr(runner, "chat_template", None) else ("\nuser:",)
    if tools:
        tc = body.tool_choice
        if tc == "required" or (tc is not None and not isinstance(tc, str)):
            grammar = _tool_grammar(tools, None if isinstance(tc, str) else tc.function.name)
        elif grammar is None:
            grammar = _tool_grammar(tools, None)
            triggers = (TOOL_OPEN,)  # lazy: free text until the model opens a call
    return ChatPrompt(text, add_special, stop, grammar, triggers, bool(tools), _parse_tool_calls if tools else None)
