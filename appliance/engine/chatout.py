"""One chat choice's output text -> reasoning, content and tool calls, whole or while streaming.

Built at render time from what the template showed (tools/families.py, reasoning.py) and the
request (tools offered, reasoning kept separate or inline); pure, so it is tested on text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .reasoning import Thinking
from .tools.parse import Parsed, Schemas, parse
from .tools.syntax import Syntax


@dataclass(frozen=True)
class OutputReader:
    tools: Syntax | None = None  # the family's call syntax, when tools are offered
    harmony: bool = False  # gpt-oss: channels carry reasoning and answer
    thinking: Thinking | None = None
    separate: bool = True  # reasoning into reasoning_content (else left inline in content)
    lead: str = ""  # a call marker the prompt ended with, which the output continues
    schemas: Schemas = field(default_factory=dict)
    single: bool = False  # one call at most (parallel_tool_calls false, or a named function)

    @property
    def plain(self) -> bool:
        """Nothing to parse: content streams as it is generated."""
        return self.tools is None and not self.harmony and (self.thinking is None or not self.separate)

    def read(self, text: str, final: bool = True) -> Parsed:
        p = self._read(text, final)
        if self.single:
            p.calls = p.calls[:1]
        return p

    def _read(self, text: str, final: bool) -> Parsed:
        if self.harmony:
            from .tools.harmony import parse_harmony

            p = parse_harmony(text, final)
            if self.tools is None:
                p.calls = []
            if not self.separate:
                p.content, p.reasoning = p.reasoning + p.content, ""
            return p
        reasoning, rest = "", text
        if self.thinking is not None and self.separate:
            reasoning, rest = self.thinking.split(text, final)
        if self.tools is None:
            p = Parsed(rest)
        else:
            p = parse(self.tools, self.lead + rest, final, self.schemas)
            if self.lead and p.content.startswith(self.lead):
                p.content = p.content[len(self.lead):]
        p.reasoning = reasoning
        return p


def schemas_of(tools: list[dict[str, Any]] | None) -> Schemas:
    return {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools or []}
