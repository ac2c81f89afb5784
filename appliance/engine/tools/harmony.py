"""gpt-oss's harmony output -> reasoning (analysis channel), content (final channel) and tool
calls (commentary messages addressed `to=functions.NAME`).

openai-harmony parses token ids with the o200k vocabulary, which it downloads on first use:
an offline appliance cannot, so the rendered text is read here. Output continues the
generation prompt `<|start|>assistant`: messages are `<|channel|>C[ to=R][ <|constrain|>json]
<|message|>BODY` ended by `<|end|>`, `<|call|>` or `<|return|>`, the next one opened by
`<|start|>assistant`.
"""

from __future__ import annotations

import re

from .parse import Call, Parsed
from .scan import held_back

_ENDS = ("<|end|>", "<|call|>", "<|return|>")
_MARKS = ("<|start|>", "<|channel|>", "<|message|>", *_ENDS)
_RECIPIENT = re.compile(r"to=(?:functions\.)?(?P<name>[^\s<]+)")
_CHANNEL = re.compile(r"<\|channel\|>\s*(?P<ch>\w+)")


def parse_harmony(text: str, final: bool = True) -> Parsed:
    out = Parsed("")
    for header, body, closed in _messages(text):
        if "<|message|>" not in header + ("<|message|>" if body is not None else ""):
            continue
        body = body or ""
        if not closed and not final:
            body = body[: len(body) - held_back(body, _MARKS)]
        ch = _CHANNEL.search(header)
        rcpt = _RECIPIENT.search(header)
        if rcpt is not None:
            args = body.strip() if closed or final else body.lstrip().rstrip()
            out.calls.append(Call(rcpt.group("name"), args, closed or final))
        elif ch is not None and ch.group("ch") == "analysis":
            out.reasoning += body
        else:
            out.content += body
    if final:
        out.calls = [c for c in out.calls if c.done]
    return out


def _messages(text: str) -> list[tuple[str, str | None, bool]]:
    """(header, body or None while the header is incomplete, whether the message ended)."""
    out: list[tuple[str, str | None, bool]] = []
    for chunk in re.split(r"<\|start\|>\s*assistant", text):
        if not chunk.strip():
            continue
        head, sep, rest = chunk.partition("<|message|>")
        if not sep:
            out.append((head, None, False))
            continue
        end = min((i for i in (rest.find(e) for e in _ENDS) if i >= 0), default=-1)
        out.append((head + sep, rest if end < 0 else rest[:end], end >= 0))
    return out
