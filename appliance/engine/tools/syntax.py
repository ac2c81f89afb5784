"""How one family writes tool calls, as data: markers around the calls and the shape of a
call's name and arguments. One parser (tools/parse.py) and one grammar builder read it.

Shapes of a call (`kind`):
- "tagged": call_open NAME name_end ARGS call_close, ARGS a JSON object (Mistral [ARGS],
  DeepSeek, Kimi, Functionary, gpt-oss);
- "object": call_open {"name": ..., "arguments": {...}} call_close, with the family's key
  names (Hermes, Llama 3, Command R7B, Granite, Nemotron v2, Mistral's JSON list ...);
  `name_key` None: the object's only key is the name (Apertus);
- "params": call_open NAME name_end then parameters, each matched by `param_re` with groups
  k (name), v (value) and optionally s ("true" when the value is a string) (Qwen3-Coder,
  GLM, MiniMax, Seed-OSS, DeepSeek V3.2);
- "python": a Python-style list of calls, name(arg=value, ...) (LFM2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["tagged", "object", "params", "python", "harmony"]


@dataclass(frozen=True)
class Syntax:
    name: str
    kind: Kind
    start: tuple[str, ...]  # what opens a block of calls (also the lazy grammar's triggers)
    end: str = ""  # closes the block ("" none); blocks may repeat
    open_list: bool = False  # the block is a JSON-style list: "[" call, call ... "]" then `end`
    list_prefix: str = ""  # regex before the list's "[" (Command R+'s ```json)
    list_intro: str = ""  # what is written there
    call_open: str = ""  # before each call
    name_prefix: str = ""  # regex between call_open and the name
    name_end: str = ""  # regex after the name (tagged, params)
    call_close: str = ""  # after each call
    sep: str = ""  # between calls (besides whitespace)
    name_key: str | None = "name"
    args_key: str = "arguments"
    param_re: str = ""
    name_re: str = r"[A-Za-z0-9_.\-]+"
    fence: tuple[str, str] = ("", "")  # text around a tagged call's JSON (DeepSeek R1's ```json)
    args_syntax: str = "json"  # "gemma": Gemma 4's {key:<|"|>text<|"|>} arguments
    call_fmt: str = ""  # how to write one call: {name} {args} {params} {index} (tagged, params)
    param_fmt: str = ""  # how to write one parameter: {key} {value} {is_str} {type} (params)
    one_per_block: bool = False  # each call in its own start ... end block (Hermes, GLM, Qwen3-Coder)
    content_name: str = ""  # a "call" of this name is plain content (Functionary v3.2's `all`)
    noise: str = ""  # regex of header text around calls that is not content (Muse's `to=NAME`)
    preserved: tuple[str, ...] = ()  # special tokens whose text the parser must see
    examples: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def markers(self) -> tuple[str, ...]:
        return tuple(m for m in (*self.start, self.end, self.call_open, self.call_close) if m)

    def name_pattern(self) -> re.Pattern[str]:
        return re.compile(re.escape(self.call_open) + self.name_prefix + rf"(?P<name>{self.name_re})" + self.name_end)

    def consumes(self, start: str) -> bool:
        """Whether a start marker is only a marker (a bare JSON call's `{"name"` is part of the call)."""
        return not start.startswith("{") and start != self.call_open
