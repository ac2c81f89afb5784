"""Successive parses of a growing output -> OpenAI's streamed deltas.

Each call goes out as its id and name first (empty arguments), then argument pieces; content
and reasoning go out as they grow. The parsers guarantee that what they report while the
text grows is a prefix of what they report later, so a delta is just the new tail.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from .parse import Parsed


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass
class _Sent:
    id: str
    arguments: str = ""


@dataclass
class DeltaStream:
    """What has been streamed of one choice; `update` returns the deltas to send next."""

    content: str = ""
    reasoning: str = ""
    calls: list[_Sent] = field(default_factory=list)

    def update(self, p: Parsed, final: bool = False) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if p.reasoning:
            piece = _tail(self.reasoning, p.reasoning, final)
            if piece:
                out.append({"reasoning_content": piece})
                self.reasoning += piece
        piece = _tail(self.content, p.content, final)
        if piece:
            out.append({"content": piece})
            self.content += piece
        for i, call in enumerate(p.calls):
            if i == len(self.calls):
                self.calls.append(_Sent(new_call_id()))
                out.append({"tool_calls": [{"index": i, "id": self.calls[i].id, "type": "function",
                                            "function": {"name": call.name, "arguments": ""}}]})
            sent = self.calls[i]
            if call.arguments.startswith(sent.arguments) and len(call.arguments) > len(sent.arguments):
                piece = call.arguments[len(sent.arguments):]
                sent.arguments = call.arguments
                out.append({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
        return out

    @property
    def call_ids(self) -> list[str]:
        return [c.id for c in self.calls]


def _tail(sent: str, now: str, final: bool) -> str:
    """What `now` adds to what was sent (at the end, trimmed text may only extend it)."""
    if now.startswith(sent):
        return now[len(sent):]
    if final and now.strip().startswith(sent.strip()):
        return now.strip()[len(sent.strip()):]
    return ""
