"""A family's tool-call syntax as an llguidance (Lark) grammar, so a model writes calls its
parser reads back.

Built from the same `Syntax` the parser reads: the block markers, each call written with the
family's `call_fmt` (or as the family's JSON object), arguments held to each tool's JSON
schema by llguidance's own `%json` (no schema -> GBNF expansion: a hostile `minLength` costs
nothing). From the first token for "required" or a named function; for "auto" the grammar of
what follows the family's trigger, which `guidance.lazy_grammar` puts behind free text. One
call only when parallel calls are off.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ...errors import InvalidRequest
from ..guidance import schema_lark
from .syntax import Syntax

EMPTY = '""'  # the empty sequence
_PLACEHOLDER = re.compile(r"\{(name|args|params|index)\}")


def lit(text: str) -> str:
    """A Lark string literal ("" for none)."""
    return json.dumps(text, ensure_ascii=False) if text else ""


def _seq(*parts: str) -> str:
    return " ".join(p for p in parts if p)


class _Rules:
    """Collects named Lark rules; each schema becomes a `%json` rule of its own."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.n = 0

    def add(self, body: str, name: str = "") -> str:
        self.n += 1
        name = name or f"r{self.n}"
        self.lines.append(f"{name}: {body or EMPTY}")
        return name

    def schema(self, schema: dict[str, Any]) -> str:
        """A rule for one JSON schema; returns its name."""
        self.n += 1
        name = f"s{self.n}"
        self.lines.append(f"{name}: {schema_lark(schema, param='tools')}")
        return name

    def text_until(self, tail: str) -> str:
        """Free text without `<`, then `tail`. The text and what of the tail comes before its
        first `<` are one lexeme (a terminal), because llguidance's lexer is greedy: a text
        lexeme of its own would swallow the newline a tail like "\\n</parameter>" starts
        with, and the tail could then never match. The rest, from `<`, stays a literal of
        the rule (where a marker may be a special token: guidance.with_specials)."""
        self.n += 1
        name = f"T{self.n}"
        cut = tail.find("<") if "<" in tail else len(tail)
        self.lines.append(_seq(f"{name}: /[^<]*/", lit(tail[:cut])))
        return _seq(name, lit(tail[cut:]))

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _params_rule(r: _Rules, syn: Syntax, params: dict[str, Any]) -> str:
    """Parameters written with `param_fmt`: required ones in order, optional ones optional."""
    props = params.get("properties") or {}
    required = set(params.get("required") or [])
    parts = []
    for key, sch in props.items():
        sch = sch if isinstance(sch, dict) else {}
        enum = sch.get("enum") or []
        is_str = sch.get("type") == "string" or (bool(enum) and all(isinstance(v, str) for v in enum))
        fmt = syn.param_fmt.replace("{is_str}", "true" if is_str else "false").replace(
            "{type}", "string" if is_str else str(sch.get("type", "string")))
        head, _, tail = fmt.replace("{key}", key).partition("{value}")
        if is_str and not enum:  # free text and its closing tag in one lexeme (see `text_until`)
            one = _seq(lit(head), r.text_until(tail))
        else:  # strings are written as they are, not JSON-quoted
            value = r.add(" | ".join(lit(v) for v in enum)) if is_str else r.schema(sch)
            one = _seq(lit(head), value, lit(tail))
        parts.append(one if key in required else f"({one})?")
    return r.add(" ".join(parts))


def _call_rule(r: _Rules, syn: Syntax, fn: dict[str, Any], skip: str = "") -> str:
    name, params = fn["name"], fn.get("parameters") or {"type": "object"}
    if syn.kind == "object":
        if syn.name_key is None:
            schema = {"type": "object", "properties": {name: params}, "required": [name], "additionalProperties": False}
        else:
            props: dict[str, Any] = {}
            if syn.name_key == "tool_name":  # Command R7B numbers its calls
                props["tool_call_id"] = {"type": "string", "pattern": "^[0-9]{1,2}$"}
            props[syn.name_key] = {"const": name}
            props[syn.args_key] = params
            schema = {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}
        return r.add(_seq(lit(syn.call_open[len(skip):]), r.schema(schema), lit(syn.call_close)))
    if syn.kind == "python":
        kwargs: list[str] = []
        required = set(params.get("required") or [])
        for key, sch in (params.get("properties") or {}).items():
            one = _seq('", "' if kwargs else "", lit(f"{key}="), r.schema(sch if isinstance(sch, dict) else {}))
            kwargs.append(one if key in required else f"({one})?")  # the comma goes with its argument
        body = " ".join(kwargs)
        return r.add(_seq(lit(f"{name}("), body, lit(")")))
    parts = []
    fmt = syn.call_fmt[len(skip):] if syn.call_fmt.startswith(skip) else syn.call_fmt
    for piece in _PLACEHOLDER.split(fmt.replace("{name}", "\x00")):
        if piece == "args":
            parts.append(r.schema(params))
        elif piece == "params":
            parts.append(_params_rule(r, syn, params))
        elif piece == "index":
            parts.append("/[0-9]/")
        else:
            parts.append(lit(piece.replace("\x00", name)))
    return r.add(_seq(*parts))


def tool_call_grammar(syn: Syntax, tools: list[dict[str, Any]], only: str | None = None,
                      parallel: bool = True, lazy: bool = False, lead: str = "") -> str:
    """Lark whose `start` writes one block of calls (several when `parallel`) in `syn`'s
    syntax, starting with its first start marker or, when the prompt already ends with a
    marker (`lead`), with what follows it. `lazy`: what follows the trigger (`triggers`)."""
    fns = [t["function"] for t in tools if only is None or t["function"]["name"] == only]
    if not fns:
        raise InvalidRequest(f"tool_choice names a function that is not in tools: {only!r}", param="tool_choice")
    if syn.kind == "harmony":
        return _harmony(fns, lazy)
    trigger = triggers(syn)[0]
    if lazy and not syn.consumes(trigger):  # the trigger is the first call's own opening
        lead = trigger
    r = _Rules()
    call = r.add(" | ".join(_call_rule(r, syn, fn) for fn in fns), "call")
    start = lit(syn.start[0]) if syn.consumes(syn.start[0]) and not lazy else ""
    if lead:  # the first call without the marker the prompt (or the trigger) wrote
        first = r.add(" | ".join(_call_rule(r, syn, fn, skip=lead) for fn in fns), "first")
        more = f"({_seq(lit(syn.sep) if syn.sep else '', 'call')})*" if parallel else ""
        return f"start: {_seq(first, more, lit(syn.end))}\n" + r.text()
    if syn.kind == "python":
        block = _seq(start, '"["', call, '(", " call)*' if parallel else "", '"]"', lit(syn.end))
    elif syn.open_list:
        block = _seq(start, lit(syn.list_intro), '"["', call, f'({lit(syn.sep + " ")} call)*' if parallel else "",
                     '"]"', lit(syn.end))
    elif syn.one_per_block:
        r.add(_seq(lit(syn.start[0]) if syn.consumes(syn.start[0]) else "", call, lit(syn.end)), "block")
        first_block = _seq(start, call, lit(syn.end))
        return f"start: {first_block}" + (' ("\\n"? block)*' if parallel else "") + "\n" + r.text()
    else:
        sep = lit(syn.sep) if syn.sep else ""
        block = _seq(start, call, f"({_seq(sep, 'call')})*" if parallel else "", lit(syn.end))
    return f"start: {block}\n" + r.text()


def _harmony(fns: list[dict[str, Any]], lazy: bool) -> str:
    r = _Rules()
    calls = [r.add(_seq(lit(f"{fn['name']} <|constrain|>json<|message|>"), r.schema(fn.get("parameters") or {})))
             for fn in fns]
    r.add(" | ".join(calls), "call")
    return ("start: call\n" if lazy else 'start: "<|channel|>commentary to=functions." call\n') + r.text()


def triggers(syn: Syntax) -> tuple[str, ...]:
    """Where a lazy grammar switches on: the family's start markers."""
    return (" to=functions.",) if syn.kind == "harmony" else syn.start[:1]


def write_calls(syn: Syntax, calls: list[tuple[str, Any]]) -> str:
    """Calls (name, arguments mapping) as the family writes them, for the history of
    templates that show only text for an assistant turn."""
    def one(i: int, name: str, args: Any) -> str:
        if syn.kind == "object":
            obj = {name: args} if syn.name_key is None else {syn.name_key: name, syn.args_key: args}
            if syn.name_key == "tool_name":  # Command R7B numbers its calls (as its grammar asks)
                obj = {"tool_call_id": str(i), **obj}
            return syn.call_open + json.dumps(obj, ensure_ascii=False) + syn.call_close
        if syn.kind == "python":
            return f"{name}(" + ", ".join(f"{k}={_py(v)}" for k, v in (args or {}).items()) + ")"
        params = "".join(
            syn.param_fmt.replace("{key}", k).replace("{is_str}", str(isinstance(v, str)).lower())
            .replace("{type}", "string" if isinstance(v, str) else "number")
            .replace("{value}", v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))
            for k, v in (args or {}).items())
        return (syn.call_fmt.replace("{name}", name).replace("{index}", str(i))
                .replace("{args}", json.dumps(args, ensure_ascii=False)).replace("{params}", params))

    start = syn.start[0] if syn.consumes(syn.start[0]) else ""
    parts = [one(i, n, a) for i, (n, a) in enumerate(calls)]
    if syn.one_per_block:
        return "".join(start + p + syn.end for p in parts)
    if syn.kind == "python" or syn.open_list:
        return start + syn.list_intro + "[" + (", " if syn.kind == "python" else syn.sep + " ").join(parts) + "]" + syn.end
    return start + (syn.sep or "").join(parts) + syn.end


def _py(v: Any) -> str:
    """A value as a Python literal the way LFM2 writes them (strings double-quoted)."""
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_py(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_py(x)}" for k, x in v.items()) + "}"
    return json.dumps(v, ensure_ascii=False)
