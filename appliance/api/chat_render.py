"""Messages + tools + response_format -> the prompt, grammar and output reader of one chat
request. Adapter over the engine's chat rendering (appliance.engine.chat).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..engine.chatout import OutputReader
from ..engine.protocol import ServingRunner
from .schemas import ChatCompletionRequest


@dataclass
class ChatPrompt:
    text: str
    add_special: bool = False
    stop: tuple[str, ...] = ()
    grammar: str | None = None
    grammar_triggers: tuple[str, ...] = ()
    reader: OutputReader = field(default_factory=OutputReader)  # output -> reasoning, content, tool calls
    preserved: tuple[str, ...] = ()  # special tokens the reader must see in the output
    grammar_param: str = "response_format"  # the request field a grammar error points at


def response_grammar(body: ChatCompletionRequest) -> str | None:
    from ..engine.guidance import response_format_grammar

    rf = body.response_format
    if rf is None:
        return None
    return response_format_grammar(rf.model_dump(by_alias=True, exclude_none=True))


def template_kwargs(body: ChatCompletionRequest) -> dict[str, Any]:
    """Variables the client passes to the template: `chat_template_kwargs`, `reasoning_effort`."""
    out = dict(body.chat_template_kwargs or {})
    if body.reasoning_effort is not None:
        out.setdefault("reasoning_effort", body.reasoning_effort)
    return out


def render(runner: ServingRunner, body: ChatCompletionRequest) -> ChatPrompt:
    """The engine renders (template, tool family, grammar, reader); this picks the grammar:
    a forced tool call (required / named) wins, else response_format, else the lazy
    tool-call grammar for tool_choice "auto"."""
    from ..engine.chat import render_chat
    from ..engine.guidance import specials_of

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
        tool_use_template=runner.tool_use_template,
        template_kwargs=template_kwargs(body),
        parallel_tool_calls=body.parallel_tool_calls is not False,
        reasoning=body.reasoning_mode or runner.reasoning,
        specials=specials_of(runner.vocab) if tools else None,
    )
    grammar, triggers, param = r.grammar, r.grammar_triggers, "tools"
    rf_grammar = response_grammar(body)
    if rf_grammar is not None and (grammar is None or triggers):
        grammar, triggers, param = rf_grammar, (), "response_format"
    return ChatPrompt(r.prompt, r.add_special, tuple(r.stop), grammar, tuple(triggers), r.reader, r.preserved,
                      param)
