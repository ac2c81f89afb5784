"""The tool-call syntax of each model family, and which one a template speaks.

A family is recognised by what its template writes (the markers it renders for an assistant
tool call), never by the model's name; the first family whose every marker is in the
template source wins, so the more specific come first. Facts from llama.cpp's
tests/test-chat*.cpp and the templates themselves (tests/data/templates); every template
of the collection is checked by rendering a call through it and parsing it back.
"""

from __future__ import annotations

from .syntax import Syntax

_XML_PARAM = r"<parameter=(?P<k>[^>\n]+)>\n?(?P<v>.*?)\n?</parameter>"
_DSML = "｜DSML｜"

_DS = ("<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>")

# (markers that must all be in the template, syntax)
FAMILIES: tuple[tuple[tuple[str, ...], Syntax], ...] = (
    (("<|channel|>", "<|constrain|>"), Syntax(
        "gpt-oss", "harmony", ("<|channel|>commentary to=functions.", " to=functions."),
        preserved=("<|channel|>", "<|message|>", "<|constrain|>", "<|call|>", "<|start|>", "<|end|>", "<|return|>"))),
    ((f"<{_DSML}function_calls>",), Syntax(
        "deepseek-v3.2", "params", (f"<{_DSML}function_calls>",), end=f"</{_DSML}function_calls>",
        call_open=f'<{_DSML}invoke name="', name_end='">', call_close=f"</{_DSML}invoke>", name_re=r'[^"]+',
        param_re=rf'<{_DSML}parameter name="(?P<k>[^"]+)" string="(?P<s>true|false)">(?P<v>.*?)</{_DSML}parameter>')),
    (("<｜tool▁calls▁begin｜>", "```json"), Syntax(
        "deepseek-r1", "tagged", ("<｜tool▁calls▁begin｜>",), end="<｜tool▁calls▁end｜>",
        call_open="<｜tool▁call▁begin｜>", name_prefix=r"function<｜tool▁sep｜>", name_end=r"\n",
        fence=("```json", "```"), call_close="<｜tool▁call▁end｜>", preserved=_DS)),
    (("<｜tool▁calls▁begin｜>",), Syntax(
        "deepseek-v3.1", "tagged", ("<｜tool▁calls▁begin｜>",), end="<｜tool▁calls▁end｜>",
        call_open="<｜tool▁call▁begin｜>", name_end="<｜tool▁sep｜>", call_close="<｜tool▁call▁end｜>", preserved=_DS)),
    (("<|tool_calls_section_begin|>",), Syntax(
        "kimi-k2", "tagged", ("<|tool_calls_section_begin|>",), end="<|tool_calls_section_end|>",
        call_open="<|tool_call_begin|>", name_prefix=r"\s*(?:functions\.)?", name_re=r"[A-Za-z0-9_\-]+",
        name_end=r"(?::\d+)?\s*<\|tool_call_argument_begin\|>", call_close="<|tool_call_end|>",
        preserved=("<|tool_calls_section_begin|>", "<|tool_call_begin|>", "<|tool_call_argument_begin|>",
                   "<|tool_call_end|>", "<|tool_calls_section_end|>"))),
    (("<minimax:tool_call>",), Syntax(
        "minimax-m2", "params", ("<minimax:tool_call>",), end="</minimax:tool_call>",
        call_open='<invoke name="', name_end='">', call_close="</invoke>", name_re=r'[^"]+',
        param_re=r'<parameter name="(?P<k>[^"]+)">(?P<v>.*?)</parameter>')),
    (("<seed:tool_call>",), Syntax(
        "seed-oss", "params", ("<seed:tool_call>",), end="</seed:tool_call>",
        call_open="<function=", name_re=r"[^>\n]+", name_end=">", call_close="</function>", param_re=_XML_PARAM)),
    (("<arg_key>",), Syntax(
        "glm-4.5", "params", ("<tool_call>",), end="</tool_call>", name_re=r"[^\s<]+", name_end=r"\s*",
        param_re=r"<arg_key>(?P<k>.*?)</arg_key>\s*<arg_value>(?P<v>.*?)</arg_value>")),
    (("<parameter=", "<function="), Syntax(
        "qwen3-coder", "params", ("<tool_call>",), end="</tool_call>", call_open="<function=",
        name_re=r"[^>\n]+", name_end=">", call_close="</function>", param_re=_XML_PARAM)),
    (("<function=",), Syntax(
        "functionary-v3.1", "tagged", ("<function=",), call_open="<function=", name_end=">",
        call_close="</function>")),
    ((">>>",), Syntax("functionary-v3.2", "tagged", (">>>",), call_open=">>>", name_end=r"\n")),
    (("[ARGS]",), Syntax(
        "mistral-v11", "tagged", ("[TOOL_CALLS]",), call_open="[TOOL_CALLS]", name_end=r"\[ARGS\]",
        preserved=("[TOOL_CALLS]", "[ARGS]"))),
    (("[TOOL_CALLS]",), Syntax(
        "mistral", "object", ("[TOOL_CALLS]",), open_list=True, sep=",", preserved=("[TOOL_CALLS]",))),
    (("<|START_ACTION|>",), Syntax(
        "command-r7b", "object", ("<|START_ACTION|>",), open_list=True, end="<|END_ACTION|>", sep=",",
        name_key="tool_name", args_key="parameters", preserved=("<|START_ACTION|>", "<|END_ACTION|>"))),
    (("<TOOLCALL>",), Syntax(
        "nemotron-v2", "object", ("<TOOLCALL>",), open_list=True, end="</TOOLCALL>", sep=",")),
    (("<|tools_prefix|>",), Syntax(
        "apertus", "object", ("<|tools_prefix|>",), open_list=True, end="<|tools_suffix|>", sep=",",
        name_key=None, preserved=("<|tools_prefix|>", "<|tools_suffix|>"))),
    (("<|tool_call_start|>",), Syntax(
        "lfm2", "python", ("<|tool_call_start|>",), end="<|tool_call_end|>",
        preserved=("<|tool_call_start|>", "<|tool_call_end|>"))),
    (("functools[",), Syntax("firefunction-v2", "object", ("functools",), open_list=True, sep=",")),
    (("<|tool_call|>",), Syntax("granite", "object", ("<|tool_call|>",), open_list=True, sep=",",
                                preserved=("<|tool_call|>",))),
    (("<tool_call>",), Syntax("hermes", "object", ("<tool_call>",), end="</tool_call>")),
    (("<|python_tag|>",), Syntax(
        "llama3", "object", ("<|python_tag|>", '{"name"', '{"type"'), sep=";", args_key="parameters",
        preserved=("<|python_tag|>",))),
)

GENERIC = Syntax("generic", "object", ("<tool_call>",), end="</tool_call>")


def detect(template_source: str) -> Syntax | None:
    """The family a template's source speaks, or None (it knows no tool-call syntax)."""
    for markers, syn in FAMILIES:
        if all(m in template_source for m in markers):
            return syn
    return None
