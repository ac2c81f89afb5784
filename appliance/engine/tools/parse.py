"""Generated text -> content and tool calls, for one family's `Syntax`, complete or still growing.

With `final=False` the text is a stream's prefix: a call whose name is known comes back with
the arguments seen so far (`done=False`), and content stops before anything that may become
a marker. Arguments are always a prefix of what the complete text gives (raw JSON as the
model wrote it, or parameters joined as they close), so a stream can send them as deltas.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import Any

from .scan import held_back, json_end
from .syntax import Syntax


@dataclass
class Call:
    name: str
    arguments: str  # JSON text (a prefix of it while not done)
    done: bool = True


@dataclass
class Parsed:
    content: str
    calls: list[Call] = field(default_factory=list)
    reasoning: str = ""


Schemas = dict[str, dict[str, Any]]  # tool name -> its parameters schema


def parse(syn: Syntax, text: str, final: bool = True, schemas: Schemas | None = None) -> Parsed:
    """Split `text` into content and calls the way `syn` writes them."""
    if syn.kind == "harmony":
        from .harmony import parse_harmony

        return parse_harmony(text, final)
    at, which = _find_start(syn, text, 0)
    if at < 0:
        keep = len(text) if final else len(text) - held_back(text, syn.start)
        return Parsed(text[:keep])
    calls: list[Call] = []
    pos, closed = at, True
    while closed:
        block, pos, closed = _block(syn, text, pos + (len(which) if syn.consumes(which) else 0), final, schemas or {})
        calls += block
        if not closed or (block and not block[-1].done):
            break
        nxt, which = _find_start(syn, text, pos)
        if nxt < 0 or text[pos:nxt].strip():
            break
        pos = nxt
    head = text[:at]
    if syn.content_name:  # Functionary v3.2: `>>>all\ntext` is content, not a call
        head += "".join(c.arguments for c in calls if c.name == syn.content_name)
        calls = [c for c in calls if c.name != syn.content_name]
    if syn.noise:
        head = re.sub(syn.noise, "", head)
    done = [c for c in calls if c.done]
    if final:
        if not done and not (syn.content_name and head):
            return Parsed(text)  # a start marker, but no complete call after it: plain text
        rest = text[pos:] if closed else ""
        return Parsed((head.strip() + " " + rest.strip()).strip(), done)
    return Parsed(head, calls)


def _find_start(syn: Syntax, text: str, frm: int) -> tuple[int, str]:
    best, which = -1, ""
    for s in syn.start:
        i = text.find(s, frm)
        if not syn.consumes(s) and i >= 0 and text[:i].strip():
            continue  # a bare JSON call counts only at the very start (Llama 3)
        if i >= 0 and (best < 0 or i < best):
            best, which = i, s
    return best, which


def _skip(text: str, pos: int) -> int:
    """Past the whitespace at `pos`."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _closer(text: str, pos: int, closer: str) -> int | None:
    """Past `closer` (after whitespace) at `pos`; -1 when the text ends inside it; None when absent."""
    q = _skip(text, pos)
    if text.startswith(closer, q):
        return q + len(closer)
    return -1 if closer.startswith(text[q:]) else None


def _block(syn: Syntax, text: str, pos: int, final: bool, schemas: Schemas) -> tuple[list[Call], int, bool]:
    """One block of calls from `pos`: the calls, where parsing stopped, whether the block closed."""
    if syn.kind == "python":
        return _python_calls(syn, text, pos)
    if syn.open_list:
        pos = _skip(text, pos)
        if syn.list_prefix:
            m = re.compile(syn.list_prefix).match(text, pos)
            if m is None:
                return [], pos, False
            pos = m.end()
        if not text.startswith("[", pos):
            return [], pos, False
        pos += 1
    calls: list[Call] = []
    while True:
        pos = _skip(text, pos)
        if syn.sep and calls and text.startswith(syn.sep, pos):
            pos = _skip(text, pos + len(syn.sep))
        if syn.open_list and text.startswith("]", pos):
            pos += 1
            if not syn.end:
                return calls, pos, True
            q = _closer(text, pos, syn.end)
            return calls, (q if q and q > 0 else pos), q is not None and q > 0 or (final and q is None)
        if not syn.open_list and syn.end and text.startswith(syn.end, pos):
            return calls, pos + len(syn.end), True
        if pos >= len(text):
            return calls, pos, bool(calls) and not syn.end and not syn.open_list
        if syn.call_open and not text.startswith(syn.call_open, pos):
            return calls, pos, bool(calls) and not syn.end and not syn.open_list
        call, pos = _one(syn, text, pos, final, schemas)
        if call is None:
            return calls, pos, False
        calls.append(call)
        if not call.done:
            return calls, pos, False


def _one(syn: Syntax, text: str, pos: int, final: bool, schemas: Schemas) -> tuple[Call | None, int]:
    if syn.kind == "object":
        return _object_call(syn, text, pos)
    m = syn.name_pattern().match(text, pos)
    if m is None or (not final and m.end("name") == len(text)):  # no name yet, or it may still grow
        return None, pos
    name, pos = m.group("name"), m.end()
    if name == syn.content_name:  # text up to the next call
        nxt = text.find(syn.call_open, pos)
        return Call(name, text[pos: nxt if nxt >= 0 else len(text)], nxt >= 0 or final), (nxt if nxt >= 0 else len(text))
    if syn.kind == "params":
        return _param_call(syn, text, pos, name, schemas.get(name, {}))
    pos = _skip(text, pos)
    if syn.args_syntax == "gemma":
        close = text.find(syn.call_close, pos)
        if close < 0:
            return Call(name, "", False), len(text)
        return Call(name, gemma_args(text[pos:close])), close + len(syn.call_close)
    if syn.fence[0]:
        if not text.startswith(syn.fence[0], pos):
            return (Call(name, "", False), pos) if syn.fence[0].startswith(text[pos:]) else (None, pos)
        pos = _skip(text, pos + len(syn.fence[0]))
    end = json_end(text, pos)
    if end is None:
        return Call(name, text[pos:].rstrip(), False), len(text)
    args = text[pos:end]
    pos = end
    for closer in (syn.fence[1], syn.call_close):
        if closer:
            q = _closer(text, pos, closer)
            if q == -1:
                return Call(name, args, False), len(text)
            pos = q if q is not None else pos
    return Call(name, args), pos


_KEY = re.compile(r'"(?P<k>(?:[^"\\]|\\.)*)"\s*:\s*')


def _object_call(syn: Syntax, text: str, pos: int) -> tuple[Call | None, int]:
    """One JSON object call; while incomplete, its name and the arguments written so far."""
    if syn.call_open:
        if not text.startswith(syn.call_open, pos):
            return None, pos
        pos = _skip(text, pos + len(syn.call_open))
    if not text.startswith("{", pos):
        return None, pos
    end = json_end(text, pos)
    name, args = None, None
    i = pos + 1
    while True:  # walk the object's top-level keys
        i = _skip(text, i)
        if i < len(text) and text[i] == ",":
            i = _skip(text, i + 1)
        km = _KEY.match(text, i)
        if km is None:
            break
        key = km.group("k")
        vstart = km.end()
        vend = json_end(text, vstart)
        if syn.name_key is None:
            name, args = key, text[vstart: vend if vend is not None else len(text)]
            if vend is None:
                args = args.rstrip()
        elif key == syn.name_key and vend is not None:
            name = json.loads(text[vstart:vend])
        elif key == syn.args_key:
            args = text[vstart:vend] if vend is not None else text[vstart:].rstrip()
            if args.startswith('"'):  # arguments as a JSON string: known only once it closes
                args = json.loads(args) if vend is not None else ""
        if vend is None:
            break
        i = vend
    if end is None:
        return (Call(name, args or "", False) if isinstance(name, str) else None), len(text)
    if not isinstance(name, str):
        return None, pos
    pos = end
    if syn.call_close:
        q = _closer(text, pos, syn.call_close)
        if q == -1:
            return Call(name, args or "{}", False), len(text)
        pos = q if q is not None else pos
    return Call(name, args if args is not None else "{}"), pos


def _param_call(syn: Syntax, text: str, pos: int, name: str, schema: dict[str, Any]) -> tuple[Call, int]:
    """Parameters until the call closes; arguments as JSON built from the closed ones."""
    pat = re.compile(syn.param_re, re.S)
    props = schema.get("properties") or {}
    parts: list[str] = []
    while True:
        pos = _skip(text, pos)
        m = pat.match(text, pos)
        if m is None:
            break
        k, v = m.group("k"), m.group("v")
        groups = m.groupdict()
        is_str = groups.get("s") or (None if groups.get("t") is None else str(groups["t"] == "string").lower())
        parts.append(json.dumps(k, ensure_ascii=False) + ": " + _value(v, props.get(k, {}), is_str))
        pos = m.end()
    args = "{" + ", ".join(parts)
    if syn.call_close:
        q = _closer(text, pos, syn.call_close)
        if q is not None and q >= 0:
            return Call(name, args + "}"), q
    elif text.startswith(syn.end, _skip(text, pos)):  # the block's end closes its one call
        return Call(name, args + "}"), pos
    return Call(name, args, False), len(text)


def _value(raw: str, schema: dict[str, Any], is_str: str | None) -> str:
    """A parameter's text as JSON: a string where the schema (or the model) says so, else the
    JSON it spells, else a string."""
    v = raw.strip("\n") if is_str is None else raw
    if is_str == "true" or schema.get("type") == "string":
        return json.dumps(v, ensure_ascii=False)
    try:
        return json.dumps(json.loads(v), ensure_ascii=False)
    except (json.JSONDecodeError, ValueError):
        return json.dumps(v, ensure_ascii=False)


def _python_calls(syn: Syntax, text: str, pos: int) -> tuple[list[Call], int, bool]:
    """A Python list of calls `[f(a=1), g(b="x")]`, read with `ast` once it is closed."""
    end = text.find(syn.end, pos) if syn.end else len(text)
    if end < 0:
        return [], pos, False
    try:
        tree = ast.parse(text[pos:end].strip(), mode="eval").body
    except SyntaxError:
        return [], pos, False
    items = tree.elts if isinstance(tree, (ast.List, ast.Tuple)) else [tree]
    calls = []
    for node in items:
        if not isinstance(node, ast.Call) or not isinstance(node.func, (ast.Name, ast.Attribute)):
            return [], pos, False
        try:
            args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
        except ValueError:
            return [], pos, False
        calls.append(Call(ast.unparse(node.func), json.dumps(args, ensure_ascii=False)))
    return calls, end + len(syn.end), True


_GEMMA_STR = re.compile(r'<\|"\|>(.*?)<\|"\|>', re.S)
_BARE_KEY = re.compile(r'([{,]\s*)([A-Za-z_][\w\-]*)\s*:')


def gemma_args(raw: str) -> str:
    """Gemma 4's argument syntax ({key:<|"|>text<|"|>,n:3}) as JSON text."""
    strings: list[str] = []

    def stash(m: re.Match[str]) -> str:
        strings.append(m.group(1))
        return f"\x00{len(strings) - 1}\x00"

    body = _BARE_KEY.sub(lambda m: f'{m.group(1)}"{m.group(2)}":', _GEMMA_STR.sub(stash, raw))
    body = re.sub("\x00(\\d+)\x00", lambda m: json.dumps(strings[int(m.group(1))], ensure_ascii=False), body)
    try:
        return json.dumps(json.loads(body), ensure_ascii=False)
    except json.JSONDecodeError:
        return json.dumps({"_raw": raw}, ensure_ascii=False)


def lead_in(prompt: str, syn: Syntax) -> str:
    """The call marker a generation prompt already ends with (Functionary v3.2's `>>>`): the
    output continues it, so the parser must read it in front of the generated text."""
    for m in (*syn.start, syn.call_open):
        if m and syn.consumes(m) is False and prompt.endswith(m):
            return m
    return ""
