"""A chat template compiled once, and what it can and cannot take, found out by rendering.

Real templates disagree on the shape of a conversation: some iterate tool-call arguments
as a mapping while OpenAI sends a JSON string, some refuse a system role, some insist that
user and assistant alternate or that tool-call ids are 9 characters, tool_use variants
iterate `tools` even when there are none. Rather than keep a list of model names, we ask
the template itself (as llama.cpp's and minja's capability probes do): render small
conversations carrying a needle and look for it (`Caps`). Probing costs a few renders per
template source, once per process.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.meta
from jinja2.sandbox import SandboxedEnvironment
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from ..errors import InvalidRequest

_RENDER_ERRORS = (jinja2.TemplateError, ValueError, TypeError, KeyError, IndexError, AttributeError)


class TemplateRefused(Exception):
    """The template raised (raise_exception) or failed on these messages."""


def _raise(message: str) -> None:
    raise TemplateRefused(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """HF's tojson, also for what Jinja's filters return lazily (`tools | map(...)` is a
    generator; llama.cpp's own DeepSeek R1 template dumps one)."""
    def lists(o: Any) -> Any:
        if hasattr(o, "__iter__") and not isinstance(o, (str, bytes, dict)):
            return list(o)
        raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")

    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys,
                      default=lists)


@dataclass(frozen=True)
class Caps:
    """What a template accepts, each found by rendering a probe conversation."""

    system_role: bool = True  # a system message reaches the prompt
    tools: bool = False  # a tool offered in `tools` reaches the prompt
    tool_calls: bool = False  # an assistant tool call in history reaches the prompt
    object_arguments: bool = False  # tool-call arguments must be a mapping, not a JSON string
    null_content: bool = True  # an assistant tool-call message may have content None
    tools_list_always: bool = False  # `tools` must be a list even when no tools are offered
    alternation: bool = False  # user/assistant must alternate (consecutive turns get merged)
    short_ids: bool = False  # tool-call ids must be 9 alphanumerics (Mistral)
    parallel_calls: bool = True  # one assistant turn may carry several calls (Llama 3.x: one)
    functions_text: bool = False  # reads a `functions` JSON string instead of `tools` (Firefunction)
    call_text: str = ""  # how the template renders an assistant tool call (what follows the user turn)


class Template:
    """One template source, compiled once per (source, bos, eos)."""

    def __init__(self, source: str, bos: str = "", eos: str = "") -> None:
        self.source = source
        self.bos, self.eos = bos, eos
        # HF transformers' chat-template environment, except that lists the template builds
        # may be appended to (Kimi K2's do; minja allows it). Messages are copies.
        env = SandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[
            Jinja2ChatFormatter.IgnoreGenerationTags, jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise, strftime_now=Jinja2ChatFormatter.strftime_now)
        try:
            self._jinja = env.from_string(source)
            self.variables = frozenset(jinja2.meta.find_undeclared_variables(env.parse(source)))
        except jinja2.TemplateError as e:
            raise InvalidRequest(f"the chat template does not compile: {e}", param="model") from None
        self._caps: Caps | None = None
        self._lists = False
        self._lock = threading.Lock()

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The prompt text; TemplateRefused when the template raises."""
        extra: dict[str, Any] = {"datetime": datetime.now(timezone.utc).strftime("%b %d %Y %H:%M:%S GMT")}
        if "functions" in self.variables and "tools" not in self.variables:
            extra["functions"] = json.dumps([t["function"] for t in tools or []], ensure_ascii=False, indent=2)
        extra.update(kwargs)
        try:
            return self._jinja.render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                      bos_token=self.bos, eos_token=self.eos, **extra)
        except TemplateRefused:
            raise
        except _RENDER_ERRORS as e:
            raise TemplateRefused(str(e)) from None

    def _try(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str | None:
        try:
            return self.render(messages, tools if tools is not None else ([] if self._lists else None),
                               add_generation_prompt=False)
        except TemplateRefused:
            return None

    @property
    def caps(self) -> Caps:
        with self._lock:  # rendering runs in worker threads; probe once
            if self._caps is None:
                self._caps = self._probe()
            return self._caps

    def _probe(self) -> Caps:
        self._lists = False
        user = {"role": "user", "content": "USER_NEEDLE"}
        if self._try([user]) is None:
            self._lists = True
            if self._try([user]) is None:
                self._lists = False
        lists = self._lists
        out = self._try([{"role": "system", "content": "SYSTEM_NEEDLE"}, user])
        system_role = out is not None and "SYSTEM_NEEDLE" in out
        tool = {"type": "function", "function": {"name": "tool_needle", "description": "d",
                                                 "parameters": {"type": "object", "properties": {
                                                     "argument_needle": {"type": "string", "description": "d"}},
                                                     "required": ["argument_needle"]}}}
        out = self._try([user], [tool])
        tools = out is not None and "tool_needle" in out
        alternation = self._try([user, user]) is None and self._try([user, {"role": "assistant", "content": "x"}, user]) is not None
        # Tool-call history: find the argument shape, null content and id rules that render.
        args_obj = {"argument_needle": "VALUE_NEEDLE"}
        seen: dict[tuple[bool, bool, bool], str | None] = {}
        for obj in (False, True):
            for null in (True, False):
                for short in (False, True):
                    call = {"id": "123456789" if short else "call_needle_0001", "type": "function",
                            "function": {"name": "tool_needle", "arguments": args_obj if obj else json.dumps(args_obj)}}
                    conv: list[dict[str, Any]] = [
                        user, {"role": "assistant", "content": None if null else "", "tool_calls": [call]},
                            {"role": "tool", "tool_call_id": call["id"], "content": "RESULT_NEEDLE"},
                            {"role": "assistant", "content": "x"}]
                    seen[(obj, null, short)] = self._try(conv, [tool])
        ok = {k: v for k, v in seen.items() if v is not None}
        # A mapping is what HF's chat code hands templates; prefer it unless the template
        # prints it as a Python dict (then it expects the JSON string).
        object_arguments = any(k[0] and "VALUE_NEEDLE" in v and "'argument_needle'" not in v for k, v in ok.items())
        usable = [k for k in ok if k[0] == object_arguments] or list(ok)
        null_content = any(k[1] and (seen[k] or "").count("None") <= (seen[(k[0], False, k[2])] or "").count("None")
                           for k in usable) if usable else True
        short_ids = bool(usable) and not any(not k[2] for k in usable)
        tool_calls = any("VALUE_NEEDLE" in v for v in ok.values())
        best = [v for k, v in ok.items() if k in usable and "VALUE_NEEDLE" in v]
        call_text = best[0][best[0].index("USER_NEEDLE"):] if best else ""
        parallel_calls = True
        if tool_calls:
            key = min(ok, key=lambda k: (k[0] != object_arguments, not k[1], k[2]))
            two = [{"id": i * 9, "type": "function", "function": {
                "name": "tool_needle", "arguments": {"argument_needle": "NEEDLE_" + i} if key[0]
                else json.dumps({"argument_needle": "NEEDLE_" + i})}} for i in "12"]
            conv = [user, {"role": "assistant", "content": None if key[1] else "", "tool_calls": two},
                    {"role": "tool", "tool_call_id": "1" * 9, "content": "R1"},
                    {"role": "tool", "tool_call_id": "2" * 9, "content": "R2"}, {"role": "assistant", "content": "x"}]
            out = self._try(conv, [tool])
            parallel_calls = out is not None and "NEEDLE_1" in out and "NEEDLE_2" in out
        return Caps(system_role=system_role, tools=tools, tool_calls=tool_calls, object_arguments=object_arguments,
                    null_content=null_content, tools_list_always=lists, alternation=alternation,
                    short_ids=short_ids, parallel_calls=parallel_calls, functions_text="functions" in self.variables and "tools" not in self.variables,
                    call_text=call_text)


@lru_cache(maxsize=64)
def compiled(source: str, bos: str = "", eos: str = "") -> Template:
    """The compiled template (and its probed caps) for this source, shared across requests."""
    return Template(source, bos, eos)
