"""Chat messages -> a prompt (the model's Jinja template), the grammar that holds its tool
calls to the family's syntax, and the reader that takes reasoning and calls back out.

Templates come from, in order: the catalog's `chat_template`, the GGUF's
`tokenizer.chat_template` (its `tool_use` variant when tools are offered), or a default:
Gemma's turn format for gemma-family architectures (the default Gemma 3 270M *base* model
has no template), ChatML otherwise.

What a template accepts is probed (template.py), the conversation shaped to it
(messages.py), its tool-call family found from how it renders a call (tools/families.py)
and its thinking tags from what it writes (reasoning.py). A template that knows no tools
gets our own tool listing in the system message and the generic Hermes-style tags.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Mapping

from ..errors import InvalidRequest
from .chatout import OutputReader, schemas_of
from .guidance import lark_grammar, lazy_grammar, with_specials
from .messages import fold_system, prepare, tool_definitions
from .reasoning import thinking_for
from .template import Caps, TemplateRefused, compiled
from .tools.families import GENERIC, detect
from .tools.grammar import tool_call_grammar, triggers, write_calls
from .tools.parse import lead_in
from .tools.syntax import Syntax

ReasoningMode = Literal["separate", "inline"]

GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% set ns = namespace(sys='') %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.sys = ns.sys + m['content'] + '\n\n' %}"
    "{% else %}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') + '\n' + ns.sys + m['content'] + '<end_of_turn>\n' }}"
    "{% set ns.sys = '' %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

CHATML_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Turn-end markers of common templates: generation must end there even if the vocabulary
# does not mark them end-of-generation (then they arrive as text and a stop string cuts them).
END_MARKERS = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<|endoftext|>")



@dataclass(frozen=True)
class ChatPrompt:
    prompt: str
    add_special: bool  # False when the template already put the BOS text at the start
    grammar: str | None  # llguidance grammar for the tool calls (or None)
    grammar_triggers: tuple[str, ...]  # non-empty: "auto", free text until one (built into `grammar`)
    tool_parser: str | None  # the tool-call family's name (None: no tools offered)
    stop: tuple[str, ...]  # the template's turn-end markers, to pass as stop strings
    reader: OutputReader = field(default_factory=OutputReader)  # output -> reasoning, content, calls
    preserved: tuple[str, ...] = ()  # special tokens whose text the reader needs in the output


def default_template(arch: str) -> str:
    return GEMMA_TEMPLATE if arch.startswith("gemma") else CHATML_TEMPLATE


def _tools_system_text(tools: list[dict[str, Any]], syn: Syntax) -> str:
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    example = write_calls(syn, [("<function-name>", {"<argument>": "<value>"})])
    return (f"You can call functions. To call one, reply with {example} and nothing else."
            f" Available functions:\n<tools>\n{listing}\n</tools>")


def _with_system(msgs: list[dict[str, Any]], text: str, caps: Caps) -> list[dict[str, Any]]:
    """`text` added to the system message (the first user turn where there is no system role)."""
    if msgs[0]["role"] == "system":
        msgs = [{**msgs[0], "content": msgs[0]["content"] + "\n\n" + text}] + msgs[1:]
    else:
        msgs = [{"role": "system", "content": text}] + msgs
    return msgs if caps.system_role else fold_system(msgs)


def _check_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidRequest("tools must be a list", param="tools")
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise InvalidRequest(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}",
                                 param="tools")
    return tools


def _grammar(syn: Syntax, tools: list[dict[str, Any]], tool_choice: Any, parallel: bool,
             lead: str, specials: Mapping[str, int]) -> tuple[str | None, tuple[str, ...]]:
    """The llguidance grammar of the tool calls for tool_choice, and its triggers (none: the
    calls start at the first token). "auto" is free text, or text up to the family's trigger
    and then the calls, in one grammar (llguidance has no lazy mode of its own)."""
    if tool_choice in (None, "auto"):
        trig = triggers(syn)
        return lazy_grammar(tool_call_grammar(syn, tools, None, parallel, lazy=True), trig[0],
                            specials=specials), trig
    if tool_choice == "required":
        return lark_grammar(with_specials(tool_call_grammar(syn, tools, None, parallel, lead=lead), specials),
                            "tools"), ()
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if not isinstance(name, str):
            raise InvalidRequest("tool_choice must name a function", param="tool_choice")
        return lark_grammar(with_specials(tool_call_grammar(syn, tools, name, False, lead=lead), specials),
                            "tools"), ()
    raise InvalidRequest(f"unsupported tool_choice {tool_choice!r}", param="tool_choice")


def render_chat(
    template_source: str | None,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
    *,
    bos: str = "",
    eos: str = "",
    arch: str = "",
    add_generation_prompt: bool = True,
    tool_use_template: str | None = None,
    template_kwargs: dict[str, Any] | None = None,
    parallel_tool_calls: bool = True,
    reasoning: ReasoningMode = "separate",
    specials: Mapping[str, int] | None = None,
) -> ChatPrompt:
    """Render messages with the model's template; work out tool grammar, output reader and stops.

    `tool_use_template`: the GGUF's `tokenizer.chat_template.tool_use` variant, used when
    tools are offered. `template_kwargs`: extra template variables (`chat_template_kwargs`,
    e.g. enable_thinking; `reasoning_effort`). `reasoning`: thinking into reasoning_content
    ("separate") or left in the content ("inline"). `specials`: the model's special tokens
    (guidance.specials_of), so the grammar lets markers come as the tokens they are."""
    if tools and tool_use_template:
        template_source = tool_use_template
    source = template_source or default_template(arch)
    tools = _check_tools(tools) if tools else None
    tpl = compiled(source, bos, eos)
    caps = tpl.caps
    known = template_source is not None
    family = detect(source, caps.call_text) if known else None
    syn = family or GENERIC
    history_native = known and caps.tool_calls
    msgs = prepare(messages, caps, native_tools=history_native,
                   write=None if history_native else (lambda calls: write_calls(syn, calls)))
    if tools and not (known and caps.tools):  # the template lists no tools: our own listing
        msgs = _with_system(msgs, _tools_system_text(tools, syn), caps)
    if tools is None and caps.tools_list_always:
        render_tools: list[dict[str, Any]] | None = []
    else:
        render_tools = tool_definitions(tools) if known and caps.tools and tools else None
    try:
        prompt = tpl.render(msgs, render_tools, add_generation_prompt, tool_choice=tool_choice,
                            **dict(template_kwargs or {}))
    except TemplateRefused as e:
        raise InvalidRequest(f"the chat template could not render these messages: {e}", param="messages") from None
    offered = bool(tools) and tool_choice != "none"
    lead = lead_in(prompt, syn) if offered else ""
    grammar, trig = _grammar(syn, tools, tool_choice, parallel_tool_calls, lead, specials or {}) if offered and tools else (None, ())
    thinking = thinking_for(source, prompt) if known else None
    if thinking is not None and thinking.starts_inside and trig == () and grammar is not None:
        # A forced call (required / named) is the answer now: the thinking the prompt opened
        # is closed, as templates do for enable_thinking=false.
        prompt += thinking.close + "\n\n"
        thinking = replace(thinking, starts_inside=False)
    reader = OutputReader(tools=syn if offered else None, harmony=syn.kind == "harmony", thinking=thinking,
                          separate=reasoning == "separate", lead=lead, schemas=schemas_of(tools),
                          single=not parallel_tool_calls or isinstance(tool_choice, dict))
    preserved = tuple(dict.fromkeys((*(syn.preserved if offered or syn.kind == "harmony" else ()),
                                     *(thinking.preserved if thinking else ()))))
    stop = tuple(m for m in END_MARKERS if m in source and m not in preserved)
    return ChatPrompt(prompt, not (bos and prompt.startswith(bos)), grammar, trig,
                      syn.name if tools else None, stop, reader, preserved)
