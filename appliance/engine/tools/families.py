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

def _dsml(name: str, block: str) -> Syntax:
    """DeepSeek V3.2 / V4: invoke blocks with string="true|false" parameters."""
    d = "｜DSML｜"
    return Syntax(name, "params", (f"<{d}{block}>",), end=f"</{d}{block}>", call_open=f'<{d}invoke name="',
                  name_re=r'[^"]+', name_end='">', call_close=f"</{d}invoke>",
                  param_re=rf'<{d}parameter name="(?P<k>[^"]+)" string="(?P<s>true|false)">(?P<v>.*?)</{d}parameter>',
                  call_fmt=f'<{d}invoke name="{{name}}">\n{{params}}</{d}invoke>\n',
                  param_fmt=f'<{d}parameter name="{{key}}" string="{{is_str}}">{{value}}</{d}parameter>\n')


_LLAMA3 = Syntax("llama3", "object", ("<|python_tag|>", '{"name"', '{"type"'), sep=";", args_key="parameters",
                 preserved=("<|python_tag|>",))

_LFM2 = Syntax("lfm2", "python", ("<|tool_call_start|>",), end="<|tool_call_end|>",
               preserved=("<|tool_call_start|>", "<|tool_call_end|>"))

_DS = ("<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>")

# (markers that must all be in the template, syntax)
FAMILIES: tuple[tuple[tuple[str, ...], Syntax], ...] = (
    (("<|channel|>", "to=functions."), Syntax(
        "gpt-oss", "harmony", ("<|channel|>commentary to=functions.", " to=functions."),
        preserved=("<|channel|>", "<|message|>", "<|constrain|>", "<|call|>", "<|start|>", "<|end|>", "<|return|>"))),
    (("DSML", "function_calls>"), _dsml("deepseek-v3.2", "function_calls")),
    (("DSML",), _dsml("deepseek-v4", "tool_calls")),
    (("<|tool_call>call:",), Syntax(
        "gemma4", "tagged", ("<|tool_call>call:",), call_open="<|tool_call>call:", name_end="", call_close="<tool_call|>",
        args_syntax="gemma", preserved=("<|tool_call>", "<tool_call|>", '<|"|>'), call_fmt="<|tool_call>call:{name}{args}<tool_call|>")),
    (("<|open|>tools<|sep|>",), Syntax(
        "kimi-k3", "params", ("<|open|>tools<|sep|>",), end="<|close|>tools<|sep|>", call_open='<|open|>call tool="',
        name_re=r'[^"]+', name_end=r'"[^<]*<\|sep\|>', call_close="<|close|>call<|sep|>",
        noise=r"<\|(?:open|close)\|>(?:response|think)<\|sep\|>",
        param_re=r'<\|open\|>argument key="(?P<k>[^"]+)" type="(?P<t>[^"]+)"<\|sep\|>(?P<v>.*?)<\|close\|>argument<\|sep\|>', call_fmt='<|open|>call tool="{name}" index="{index}"<|sep|>{params}<|close|>call<|sep|>', param_fmt='<|open|>argument key="{key}" type="{type}"<|sep|>{value}<|close|>argument<|sep|>')),
    (("]<]minimax[>[",), Syntax(
        "minimax-m3", "params", ("]<]minimax[>[<tool_call>",), end="]<]minimax[>[</tool_call>",
        call_open=']<]minimax[>[<invoke name="', name_re=r'[^"]+', name_end='">', call_close="]<]minimax[>[</invoke>",
        param_re=r"\]<\]minimax\[>\[<(?P<k>[^>/]+)>(?P<v>.*?)\]<\]minimax\[>\[</(?P=k)>", call_fmt=']<]minimax[>[<invoke name="{name}">{params}]<]minimax[>[</invoke>\n', param_fmt="]<]minimax[>[<{key}>{value}]<]minimax[>[</{key}>")),
    (("<tool_calls:opensource>",), Syntax(
        "hunyuan-3", "params", ("<tool_calls:opensource>",), end="</tool_calls:opensource>",
        call_open="<tool_call:opensource>", name_re=r"[^<\s]+", name_end=r"<tool_sep:opensource>",
        call_close="</tool_call:opensource>",
        param_re=r"<arg_key:opensource>(?P<k>.*?)</arg_key:opensource>\s*<arg_value:opensource>(?P<v>.*?)</arg_value:opensource>", call_fmt="<tool_call:opensource>{name}<tool_sep:opensource>\n{params}</tool_call:opensource>\n", param_fmt="<arg_key:opensource>{key}</arg_key:opensource>\n<arg_value:opensource>{value}</arg_value:opensource>\n")),
    (("<|tool_call:begin|>",), Syntax(
        "solar-open", "tagged", ("<|tool_calls|>",), call_open="<|tool_call:begin|>",
        name_prefix=r"[^<]*<\|tool_call:name\|>", name_end=r"<\|tool_call:args\|>", call_close="<|tool_call:end|>",
        preserved=("<|tool_calls|>", "<|tool_call:begin|>", "<|tool_call:name|>", "<|tool_call:args|>",
                   "<|tool_call:end|>"), call_fmt="<|tool_call:begin|>call_{index}<|tool_call:name|>{name}<|tool_call:args|>{args}<|tool_call:end|>")),
    (("<atem:function_calls>",), Syntax(
        "muse", "params", ("<atem:function_calls>",), end="</atem:function_calls>", call_open='<atem:invoke name="',
        name_re=r'[^"]+', name_end='">', call_close="</atem:invoke>", noise=r"\s*to=\S+?(?:<\|message\|>)?\s*$",
        param_re=r'<atem:parameter name="(?P<k>[^"]+)">(?P<v>.*?)</atem:parameter>', call_fmt='<atem:invoke name="{name}">\n{params}</atem:invoke>\n', param_fmt='<atem:parameter name="{key}">{value}</atem:parameter>\n')),
    (("<function name=", "<param name="), Syntax(
        "minicpm", "params", ('<function name="',), call_open='<function name="', name_re=r'[^"]+', name_end='">',
        call_close="</function>", param_re=r'<param name="(?P<k>[^"]+)">(?P<v>.*?)</param>', call_fmt='<function name="{name}">{params}</function>\n', param_fmt='<param name="{key}">{value}</param>')),
    (("<|function_call|>",), Syntax("gigachat-3.1", "object", ("<|function_call|>",))),
    (("function call<|role_sep|>",), Syntax("gigachat-3", "object", ("function call<|role_sep|>",),
                                            noise=r"<\|message_sep\|>\s*$")),
    (("<tool_calls>[",), Syntax("apriel", "object", ("<tool_calls>",), open_list=True, end="</tool_calls>", sep=",")),
    (("<tool_calls>",), Syntax("minimax-m1", "object", ("<tool_calls>",), end="</tool_calls>")),
    (("<｜tool▁calls▁begin｜>", "```json"), Syntax(
        "deepseek-r1", "tagged", ("<｜tool▁calls▁begin｜>",), end="<｜tool▁calls▁end｜>",
        call_open="<｜tool▁call▁begin｜>", name_prefix=r"function<｜tool▁sep｜>", name_end=r"\n",
        fence=("```json", "```"), call_close="<｜tool▁call▁end｜>", preserved=_DS, call_fmt="<｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n{args}\n```<｜tool▁call▁end｜>")),
    (("<｜tool▁calls▁begin｜>",), Syntax(
        "deepseek-v3.1", "tagged", ("<｜tool▁calls▁begin｜>",), end="<｜tool▁calls▁end｜>",
        call_open="<｜tool▁call▁begin｜>", name_end="<｜tool▁sep｜>", call_close="<｜tool▁call▁end｜>", preserved=_DS, call_fmt="<｜tool▁call▁begin｜>{name}<｜tool▁sep｜>{args}<｜tool▁call▁end｜>")),
    (("<|tool_calls_section_begin|>",), Syntax(
        "kimi-k2", "tagged", ("<|tool_calls_section_begin|>",), end="<|tool_calls_section_end|>",
        call_open="<|tool_call_begin|>", name_prefix=r"\s*(?:functions\.)?", name_re=r"[A-Za-z0-9_\-]+",
        name_end=r"(?::\d+)?\s*<\|tool_call_argument_begin\|>", call_close="<|tool_call_end|>",
        preserved=("<|tool_calls_section_begin|>", "<|tool_call_begin|>", "<|tool_call_argument_begin|>",
                   "<|tool_call_end|>", "<|tool_calls_section_end|>"), call_fmt="<|tool_call_begin|>functions.{name}:{index}<|tool_call_argument_begin|>{args}<|tool_call_end|>")),
    (("<minimax:tool_call>",), Syntax(
        "minimax-m2", "params", ("<minimax:tool_call>",), end="</minimax:tool_call>",
        call_open='<invoke name="', name_end='">', call_close="</invoke>", name_re=r'[^"]+',
        param_re=r'<parameter name="(?P<k>[^"]+)">(?P<v>.*?)</parameter>', call_fmt='<invoke name="{name}">\n{params}</invoke>\n', param_fmt='<parameter name="{key}">{value}</parameter>\n')),
    (("<seed:tool_call>",), Syntax(
        "seed-oss", "params", ("<seed:tool_call>",), end="</seed:tool_call>",
        call_open="<function=", name_re=r"[^>\n]+", name_end=">", call_close="</function>", param_re=_XML_PARAM, call_fmt="\n<function={name}>\n{params}</function>\n", param_fmt="<parameter={key}>{value}</parameter>\n", one_per_block=True)),
    (("<arg_key>",), Syntax(
        "glm-4.5", "params", ("<tool_call>",), end="</tool_call>", name_re=r"[^\s<]+", name_end=r"\s*",
        param_re=r"<arg_key>(?P<k>.*?)</arg_key>\s*<arg_value>(?P<v>.*?)</arg_value>", call_fmt="{name}\n{params}", param_fmt="<arg_key>{key}</arg_key>\n<arg_value>{value}</arg_value>\n", one_per_block=True)),
    (("<parameter=", "<function="), Syntax(
        "qwen3-coder", "params", ("<tool_call>",), end="</tool_call>", call_open="<function=",
        name_re=r"[^>\n]+", name_end=">", call_close="</function>", param_re=_XML_PARAM, call_fmt="\n<function={name}>\n{params}</function>\n", param_fmt="<parameter={key}>\n{value}\n</parameter>\n", one_per_block=True)),
    (("<function=",), Syntax(
        "functionary-v3.1", "tagged", ("<function=",), call_open="<function=", name_end=">",
        call_close="</function>", call_fmt="<function={name}>{args}</function>")),
    ((">>>",), Syntax("functionary-v3.2", "tagged", (">>>",), call_open=">>>", name_end=r"\n", content_name="all", call_fmt=">>>{name}\n{args}")),
    (("[ARGS]",), Syntax(
        "mistral-v11", "tagged", ("[TOOL_CALLS]",), call_open="[TOOL_CALLS]", name_end=r"(?:\[CALL_ID\][A-Za-z0-9]+)?\[ARGS\]",
        preserved=("[TOOL_CALLS]", "[ARGS]"), call_fmt="[TOOL_CALLS]{name}[ARGS]{args}")),
    (("[TOOL_CALLS]",), Syntax(
        "mistral", "object", ("[TOOL_CALLS]",), open_list=True, sep=",", preserved=("[TOOL_CALLS]",))),
    (("<|START_ACTION|>",), Syntax(
        "command-r7b", "object", ("<|START_ACTION|>",), open_list=True, end="<|END_ACTION|>", sep=",",
        name_key="tool_name", args_key="parameters", preserved=("<|START_ACTION|>", "<|END_ACTION|>"))),
    (("Action:", "```json", "tool_name"), Syntax(
        "command-r-plus", "object", ("Action:",), open_list=True, list_prefix=r"```(?:json)?\s*",
        list_intro="\n```json\n", end="```", sep=",",
        name_key="tool_name", args_key="parameters")),
    (("<TOOLCALL>",), Syntax(
        "nemotron-v2", "object", ("<TOOLCALL>",), open_list=True, end="</TOOLCALL>", sep=",")),
    (("<|tools_prefix|>",), Syntax(
        "apertus", "object", ("<|tools_prefix|>",), open_list=True, end="<|tools_suffix|>", sep=",",
        name_key=None, preserved=("<|tools_prefix|>", "<|tools_suffix|>"))),
    (("<|tool_call_start|>",), _LFM2),
    # LFM2 templates that list tools but write no calls in history (the model writes _LFM2's)
    (("<|tool_list_start|>",), _LFM2),
    (("List of tools: [",), _LFM2),
    (("functools[",), Syntax("firefunction-v2", "object", ("functools",), open_list=True, sep=",")),
    (("<|tool_call|>",), Syntax("granite", "object", ("<|tool_call|>",), open_list=True, sep=",",
                                preserved=("<|tool_call|>",))),
    (("<tool_call>",), Syntax("hermes", "object", ("<tool_call>",), end="</tool_call>", one_per_block=True)),
    (("<|python_tag|>",), _LLAMA3),
    (('"parameters": ',), _LLAMA3),
)

GENERIC = Syntax("generic", "object", ("<tool_call>",), end="</tool_call>", one_per_block=True)


def detect(template_source: str, call_text: str = "") -> Syntax | None:
    """The family a template speaks, or None (it knows no tool-call syntax). `call_text` is
    how the template renders a tool call (template.Caps.call_text): its markers decide, as
    templates often assemble them from pieces; the source is the fallback for templates
    that describe the syntax but do not render calls from history."""
    for text in (call_text, template_source):
        for markers, syn in FAMILIES:
            if text and all(m in text for m in markers):
                return syn
    return None
