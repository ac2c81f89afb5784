"""Pydantic error locations as the names a user wrote: `messages[0].role` in a request body,
`m.sha256` in models.toml. One reading for config files and request bodies alike."""

from __future__ import annotations

from typing import Any, Iterable

from pydantic_core import ErrorDetails

_TAG_WORDS = frozenset({"str", "int", "float", "bool", "none", "list", "dict"})


def is_union_tag(part: object) -> bool:
    """Union member labels pydantic puts into locations ('str', 'list[TextPart]',
    "literal['auto']", 'function-after[...]', 'TextPart'): not names the user wrote."""
    if not isinstance(part, str):
        return False
    return (part.lower() in _TAG_WORDS or "[" in part or "(" in part
            or part.startswith("function-") or part[:1].isupper())


def error_path(loc: Iterable[Any], prefix: Iterable[str] = ()) -> str:
    """('messages', 0, 'role') -> 'messages[0].role'; `prefix` parts (a model id) are kept as
    they are, union labels in `loc` are dropped."""
    out = ".".join(prefix)
    for part in loc:
        if is_union_tag(part):
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def error_text(err: ErrorDetails) -> str:
    """pydantic's message without the 'Value error, ' it puts before a validator's own words."""
    return err["msg"].removeprefix("Value error, ")
