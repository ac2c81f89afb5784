"""OpenAI chat messages -> the conversation shape one template accepts (its probed `Caps`).

What HF's and llama.cpp's chat code do before rendering, in one pass: text parts joined,
`developer` read as `system`, tool-call arguments as a mapping where the template iterates
them, `content: null` kept only where the template copes, system text folded into the first
user turn where the template refuses a system role, consecutive turns merged where roles
must alternate, tool-call ids shortened to the 9 alphanumerics Mistral's templates demand.
Templates that know no tools get tool traffic spelled as Hermes-style text instead.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

from ..errors import InvalidRequest
from .template import Caps


def text_of(content: Any) -> str:
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


def short_id(call_id: str) -> str:
    """A stable 9-character alphanumeric id for `call_id` (Mistral's templates require that shape)."""
    if len(call_id) == 9 and call_id.isalnum():
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]


def _arguments(raw: Any, as_object: bool, where: str) -> Any:
    if isinstance(raw, str):
        if not as_object:
            return raw
        try:
            return json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as e:
            raise InvalidRequest(f"{where}.function.arguments is not valid JSON: {e.msg}", param="messages") from None
    if raw is None:
        raw = {}
    return raw if as_object else json.dumps(raw, ensure_ascii=False)


def _tool_calls(calls: Any, caps: Caps, i: int) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise InvalidRequest(f"messages[{i}].tool_calls must be a list", param="messages")
    out = []
    for k, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequest(f"messages[{i}].tool_calls[{k}] needs function.name", param="messages")
        cid = str(c.get("id") or f"call_{i}_{k}")
        out.append({"id": short_id(cid) if caps.short_ids else cid, "type": "function",
                    "function": {"name": fn["name"],
                                 "arguments": _arguments(fn.get("arguments"), caps.object_arguments,
                                                         f"messages[{i}].tool_calls[{k}]")}})
    return out


def _inline_calls(calls: list[dict[str, Any]]) -> str:
    return "".join("<tool_call>" + json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                                              ensure_ascii=False) + "</tool_call>" for c in calls)


def _check(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidRequest(f"messages[{i}] must be an object with a role", param="messages")


CallWriter = Callable[[list[tuple[str, Any]]], str]  # (name, arguments) pairs -> the family's text


def prepare(messages: list[dict[str, Any]], caps: Caps, native_tools: bool,
            write: CallWriter | None = None) -> list[dict[str, Any]]:
    """The messages as this template takes them. `native_tools` False: the template shows no
    tool calls, so they are written into the content (by `write`, the family's syntax, or as
    Hermes tags), and tool results become user turns unless the template lists tools itself."""
    _check(messages)
    as_text = Caps(object_arguments=True)  # inline calls are written with object arguments
    out: list[dict[str, Any]] = []
    for i, src in enumerate(messages):
        m = dict(src)
        if m["role"] == "developer":
            m["role"] = "system"
        calls = m.pop("tool_calls", None) or []
        if not (m.get("content") is None and calls and native_tools and caps.null_content):
            m["content"] = text_of(m.get("content"))
        if calls and native_tools:
            m["tool_calls"] = _tool_calls(calls, caps, i)
        elif calls:
            written = _tool_calls(calls, as_text, i)
            m["content"] = (m["content"] or "") + (
                write([(c["function"]["name"], c["function"]["arguments"]) for c in written]) if write
                else _inline_calls(written))
        if m.get("reasoning_content") is not None and "thinking" not in m:
            m["thinking"] = m["reasoning_content"]  # gpt-oss's and others' name for it
        if m["role"] == "tool":
            if not native_tools and not caps.tools:
                m = {"role": "user", "content": f"<tool_response>{m['content']}</tool_response>"}
            elif caps.short_ids and m.get("tool_call_id"):
                m["tool_call_id"] = short_id(str(m["tool_call_id"]))
        out.append(m)
    if native_tools and not caps.parallel_calls:
        out = _one_call_per_turn(out)
    if not caps.system_role:
        out = fold_system(out)
    if caps.alternation:
        out = _merge_runs(out)
    return out


def fold_system(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """System text goes to the front of the next user turn (a user turn of its own at the end)."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for m in msgs:
        if m["role"] == "system":
            pending.append(m["content"])
            continue
        if pending and m["role"] == "user":
            m = {**m, "content": "\n\n".join(pending + [m["content"]])}
            pending = []
        out.append(m)
    if pending:
        out.append({"role": "user", "content": "\n\n".join(pending)})
    return out


def _merge_runs(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive plain user (or plain assistant) turns joined into one."""
    out: list[dict[str, Any]] = []
    for m in msgs:
        prev = out[-1] if out else None
        plain = m["role"] in ("user", "assistant") and not m.get("tool_calls")
        if plain and prev is not None and prev["role"] == m["role"] and not prev.get("tool_calls"):
            out[-1] = {**prev, "content": (prev["content"] or "") + "\n\n" + (m["content"] or "")}
        else:
            out.append(m)
    return out


def _one_call_per_turn(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An assistant turn with several calls and the tool results after it, as one call and its
    result at a time (for templates that take a single call per turn)."""
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(msgs):
        m = msgs[i]
        calls = m.get("tool_calls") or []
        if m["role"] != "assistant" or len(calls) < 2:
            out.append(m)
            i += 1
            continue
        j = i + 1
        results = []
        while j < len(msgs) and msgs[j]["role"] == "tool":
            results.append(msgs[j])
            j += 1
        by_id = {r.get("tool_call_id"): r for r in results}
        for k, c in enumerate(calls):
            out.append({**m, "content": m["content"] if k == 0 else (None if m["content"] is None else ""),
                        "tool_calls": [c]})
            r = by_id.pop(c["id"], None)
            if r is not None:
                out.append(r)
        out.extend(r for r in results if r.get("tool_call_id") in by_id)
        i = j
    return out


def tool_definitions(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tools in the complete shape HF's schema helper produces (description, parameters with
    properties and required), which templates index without checking."""
    out = []
    for t in tools:
        fn = dict(t["function"])
        fn.setdefault("description", "")
        params = dict(fn.get("parameters") or {"type": "object"})
        params.setdefault("type", "object")
        params.setdefault("properties", {})
        params.setdefault("required", [])
        fn["parameters"] = params
        out.append({**t, "type": "function", "function": fn})
    return out
