"""Scanning helpers shared by the tool-call parsers: where a JSON value ends in text that may
still be growing, and how much of a text's tail could be the start of a marker."""

from __future__ import annotations

_OPEN = {"{": "}", "[": "]"}


def json_end(text: str, i: int) -> int | None:
    """Index just past the JSON value starting at `text[i]`, or None while it is incomplete.

    Only brackets and strings are tracked (the value is validated by json.loads later);
    scalars end at the first character that cannot continue them."""
    n = len(text)
    if i >= n:
        return None
    c = text[i]
    if c == '"':
        j = i + 1
        while j < n:
            if text[j] == "\\":
                j += 2
                continue
            if text[j] == '"':
                return j + 1
            j += 1
        return None
    if c not in _OPEN:
        j = i
        while j < n and text[j] not in ",}] \t\r\n":
            j += 1
        return j if j < n else None
    stack = [_OPEN[c]]
    j = i + 1
    while j < n:
        ch = text[j]
        if ch == '"':
            end = json_end(text, j)
            if end is None:
                return None
            j = end
            continue
        if ch in _OPEN:
            stack.append(_OPEN[ch])
        elif stack and ch == stack[-1]:
            stack.pop()
            if not stack:
                return j + 1
        j += 1
    return None


def held_back(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of one of `markers`: text
    that may turn out to be a marker and must not be streamed as content yet."""
    best = 0
    for m in markers:
        for k in range(min(len(m) - 1, len(text)), best, -1):
            if m.startswith(text[-k:]):
                best = k
                break
    return best
