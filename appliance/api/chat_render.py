"""Messages + tools + response_format -> the prompt, grammar and tool-call parser of one
chat request. Adapter over the engine's chat rendering (appliance.engine.chat when present).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..engine.protocol import ServingRunner
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


def render(runner: ServingRunner, body: ChatCompletionRequest) -> ChatPrompt:
    """The engine renders (template, tool formats, tool grammar); this picks the grammar:
    a forced tool call (required / named) wins, else response_format, else the lazy
    tool-call grammar for tool_choice "auto"."""
    from ..engine.chat import parse_tool_calls, render_chat

    use_tools = bool(body.tools) and body.tool_choice != "none"
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []] if use_tools else None
    tc = body.tool_choice
    tool_choice = tc.model_dump() if tc is not None and not isinstance(tc, str) else tc
    r = render_chat(
        runner.chat_template,
        [m.as_dict() for m in body.messages],
        tools,
        tool_choice if use_tools else None,
        bos=runner.bos_text,
        eos=runner.eos_text,
        arch=runner.arch,
    )
    grammar, triggers = r.grammar, r.grammar_triggers
    rf_grammar = response_grammar(body)
    if rf_grammar is not None and (grammar is None or triggers):
        grammar, triggers = rf_grammar, ()
    parse = None
    if tools:
        fmt = r.tool_parser

        def parse(text: str) -> tuple[str, ToolCalls]:
            content, calls = parse_tool_calls(text, fmt)
            return content or "", [(c.name, c.arguments_json) for c in calls]

    return ChatPrompt(r.prompt, r.add_special, tuple(r.stop), grammar, tuple(triggers), bool(tools), parse)
