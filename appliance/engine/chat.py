"""Chat messages -> a prompt (the model's Jinja template), and tool calls back out of the text.

Templates come from, in order: the catalog's `chat_template`, the GGUF's
`tokenizer.chat_template`, or a default: Gemma's turn format for gemma-family
architectures (the default Gemma 3 270M *base* model has no template), ChatML otherwise.
They are rendered by llama-cpp-python's `Jinja2ChatFormatter` (a sandboxed Jinja
environment with HF's extensions).

Tool calls: llama.cpp's C++ parsers are not in the wheel, so we support named formats:
Hermes/Qwen (`<tool_call>{json}</tool_call>`), Llama 3.x JSON (`{"name", "parameters"}`,
optionally after `<|python_tag|>`), and, for templates that know nothing of tools, a
generic format: the tool list goes into the system message and the model is asked for
Hermes-style tags. A grammar keeps the call well-formed: lazy (switched on by the trigger
words) for tool_choice="auto", from the first token for "required" or a named function.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal

import jinja2
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from ..errors import InvalidRequest
from .grammar import rename_root, schema_to_gbnf

ToolFormat = Literal["hermes", "llama3", "generic"]

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

_DEFAULT_MARKERS = {"gemma": ("<end_of_turn>",), "chatml": ("<|im_end|>",)}


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments_json: str


@dataclass(frozen=True)
class ChatPrompt:
    prompt: str
    add_special: bool  # False when the template already put the BOS text at the start
    grammar: str | None  # GBNF for the tool calls (or None)
    grammar_triggers: tuple[str, ...]  # non-empty: the grammar is lazy (tool_choice "auto")
    tool_parser: ToolFormat | None  # how to read tool calls back (None: no tools offered)
    stop: tuple[str, ...]  # the template's turn-end markers, to pass as stop strings


def default_template(arch: str) -> str:
    return GEMMA_TEMPLATE if arch.startswith("gemma") else CHATML_TEMPLATE


def tool_format(template_source: str) -> ToolFormat:
    """Which tool-call format a template speaks ("generic": it knows no tools)."""
    if "<tool_call>" in template_source:
        return "hermes"
    if "<|python_tag|>" in template_source or ("tools" in template_source and '"parameters"' in template_source):
        return "llama3"
    return "generic"


def _text(content: Any) -> str:
    """OpenAI content (string, None, or a list of parts) -> plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                out.append(str(part.get("text", "")))
            elif isinstance(part, str):
                out.append(part)
            else:
                raise InvalidRequest("only text content parts are supported", param="messages")
        return "".join(out)
    raise InvalidRequest("message content must be a string or a list of parts", param="messages")


def _normalize(messages: list[dict[str, Any]], inline_tools: bool) -> list[dict[str, Any]]:
    """Give every message string content; for tool-less templates, spell tool traffic as text."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidRequest(f"messages[{i}] must be an object with a role", param="messages")
        m = dict(m)
        m["content"] = _text(m.get("content"))
        if inline_tools:
            calls = m.pop("tool_calls", None) or []
            for c in calls:
                fn = c.get("function", {}) if isinstance(c, dict) else {}
                args = fn.get("arguments", "{}")
                args_obj = json.loads(args) if isinstance(args, str) and args.strip() else args
                m["content"] += "<tool_call>" + json.dumps({"name": fn.get("name"), "arguments": args_obj}) + "</tool_call>"
            if m["role"] == "tool":
                m = {"role": "user", "content": f"<tool_response>{m['content']}</tool_response>"}
        out.append(m)
    return out


def _tools_system_text(tools: list[dict[str, Any]]) -> str:
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return (
        "You can call functions. To call one, reply with "
        '<tool_call>{"name": <function-name>, "arguments": <arguments-object>}</tool_call>'
        f" and nothing else. Available functions:\n<tools>\n{listing}\n</tools>"
    )


def _check_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidRequest("tools must be a list", param="tools")
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise InvalidRequest(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}",
                                 param="tools")
    return tools


def tool_grammar(tools: list[dict[str, Any]], fmt: ToolFormat, only: str | None = None) -> str:
    """GBNF for one tool call (named `only`) or one or more calls of any of `tools`."""
    variants = []
    args_key = "parameters" if fmt == "llama3" else "arguments"
    for t in tools:
        fn = t["function"]
        if only is not None and fn["name"] != only:
            continue
        params = fn.get("parameters") or {"type": "object"}
        variants.append({
            "type": "object",
            "properties": {"name": {"const": fn["name"]}, args_key: params},
            "required": ["name", args_key],
            "additionalProperties": False,
        })
    if not variants:
        raise InvalidRequest(f"tool_choice names a function that is not in tools: {only!r}", param="tool_choice")
    schema = variants[0] if len(variants) == 1 else {"oneOf": variants}
    call = rename_root(schema_to_gbnf(schema, param="tools"), "tool-call-json")
    if fmt == "llama3":
        root = 'root ::= "<|python_tag|>"? tool-call-json\n'
    else:
        block = 'tool-call-block ::= "<tool_call>" "\\n"? tool-call-json "\\n"? "</tool_call>"\n'
        more = "" if only is not None else ' ("\\n"? tool-call-block)*'
        root = f"root ::= tool-call-block{more}\n" + block
    return root + call


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
) -> ChatPrompt:
    """Render messages with the model's template; work out tool grammar, parser and stops."""
    source = template_source or default_template(arch)
    tools = _check_tools(tools) if tools else None
    fmt: ToolFormat | None = tool_format(source) if tools else None
    inline = fmt == "generic"
    msgs = _normalize(messages, inline_tools=inline or template_source is None)
    if tools and inline:
        sys_text = _tools_system_text(tools)
        if msgs[0]["role"] == "system":
            msgs[0] = {**msgs[0], "content": msgs[0]["content"] + "\n\n" + sys_text}
        else:
            msgs.insert(0, {"role": "system", "content": sys_text})
    try:
        fmt_obj = Jinja2ChatFormatter(source, eos_token=eos, bos_token=bos, add_generation_prompt=add_generation_prompt)
        # plain dicts: llama-cpp-python types them as TypedDicts that _normalize already checks
        render: Any = fmt_obj
        res = render(messages=msgs, tools=None if inline else tools, tool_choice=tool_choice)
    except (jinja2.TemplateError, ValueError, TypeError) as e:
        raise InvalidRequest(f"the chat template could not render these messages: {e}", param="messages") from None
    prompt = res.prompt
    add_special = not (bos and prompt.startswith(bos))
    grammar: str | None = None
    triggers: tuple[str, ...] = ()
    if tools and tool_choice != "none":
        if tool_choice in (None, "auto"):
            grammar = tool_grammar(tools, fmt or "generic")
            triggers = ('{"name"', "<|python_tag|>") if fmt == "llama3" else ("<tool_call>",)
        elif tool_choice == "required":
            grammar = tool_grammar(tools, fmt or "generic")
        elif isinstance(tool_choice, dict):
            name = (tool_choice.get("function") or {}).get("name")
            if not isinstance(name, str):
                raise InvalidRequest("tool_choice must name a function", param="tool_choice")
            grammar = tool_grammar(tools, fmt or "generic", only=name)
        else:
            raise InvalidRequest(f"unsupported tool_choice {tool_choice!r}", param="tool_choice")
    stop = tuple(m for m in END_MARKERS if m in source)
    return ChatPrompt(prompt, add_special, grammar, triggers, fmt, stop)


# --- reading tool calls back -------------------------------------------------------------------

_HERMES_RE = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def _call_from(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    args_json = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return ToolCall(id="call_" + secrets.token_hex(12), name=obj["name"], arguments_json=args_json)


def _json_objects(text: str) -> list[Any]:
    """JSON values at the start of `text`, one after another (separated by space, ';' or ',')."""
    dec = json.JSONDecoder()
    out, i = [], 0
    while i < len(text):
        while i < len(text) and text[i] in " \t\r\n;,":
            i += 1
        if i >= len(text):
            break
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            return []
        out.append(obj)
    return out


def parse_tool_calls(text: str, fmt: ToolFormat | None = None) -> tuple[str | None, list[ToolCall]]:
    """Split generated text into (content, tool calls); content None when only calls remain."""
    calls: list[ToolCall] = []
    if fmt in (None, "hermes", "generic") and "<tool_call>" in text:
        for m in _HERMES_RE.finditer(text):
            objs = _json_objects(m.group(1))
            call = _call_from(objs[0]) if objs else None
            if call:
                calls.append(call)
        if calls:
            rest = _HERMES_RE.sub("", text).strip()
            return (rest or None), calls
    stripped = text.strip()
    if stripped.startswith("<|python_tag|>"):
        stripped = stripped[len("<|python_tag|>") :].strip()
    if stripped.startswith(("{", "[")):
        objs = _json_objects(stripped)
        flat: list[Any] = []
        for o in objs:
            if isinstance(o, dict) and isinstance(o.get("tool_calls"), list):
                flat.extend(c.get("function", c) if isinstance(c, dict) else c for c in o["tool_calls"])
            elif isinstance(o, list):
                flat.extend(o)
            else:
                flat.append(o)
        found = [c for c in map(_call_from, flat) if c is not None]
        if found and len(found) == len(flat):
            return None, found
    return (text if text else None), []
