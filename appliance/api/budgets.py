"""Budgets for every cost a request body controls, checked before any work starts.

Each one is far above what a legitimate client sends (OpenAI's own limits where it has
them) and far below what stalls the event loop or a model (issue 13 measured 200k messages
at 1.1 s, 20k tools at 0.5 s, 100k stop strings at 21x slower streams). Over a budget is a
400 naming the parameter; docs/security.md lists them.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequest

MAX_JSON_DEPTH = 64  # nesting of the body (and of tool-call arguments)
MAX_MESSAGES = 4096
MAX_TOOLS = 128
MAX_STOP = 16  # stop strings per request (OpenAI: 4)
MAX_STOP_BYTES = 4096  # all stop strings together
MAX_LOGIT_BIAS = 1024  # entries (OpenAI: 300)
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit
MAX_PROMPTS = 128  # legacy completions: prompts in one request


def check_json(value: Any, param: str = "", max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse nesting deeper than `max_depth` and strings that are not Unicode text (lone
    surrogates from `\\ud800` escapes: they fail later, when encoded, as a 500)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            _check_text(v, param)
        elif isinstance(v, (dict, list)):
            if depth > max_depth:
                raise InvalidRequest(f"the JSON is nested deeper than {max_depth} levels", param=param or None)
            if isinstance(v, dict):
                for k, x in v.items():
                    _check_text(k, param)
                    stack.append((x, depth + 1))
            else:
                stack.extend((x, depth + 1) for x in v)


def _check_text(s: str, param: str) -> None:
    if s.isascii():
        return
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("a string holds a lone UTF-16 surrogate (e.g. \\ud800): not Unicode text",
                             param=param or None) from None


def at_most(items: Any, limit: int, param: str, what: str) -> None:
    if isinstance(items, (list, dict)) and len(items) > limit:
        raise InvalidRequest(f"{len(items)} {what}; at most {limit} are accepted", param=param)


def check_stop(stop: Any) -> None:
    if isinstance(stop, list):
        at_most(stop, MAX_STOP, "stop", "stop sequences")
        total = sum(len(s.encode("utf-8", "surrogatepass")) for s in stop if isinstance(s, str))
    elif isinstance(stop, str):
        total = len(stop.encode("utf-8", "surrogatepass"))
    else:
        return
    if total > MAX_STOP_BYTES:
        raise InvalidRequest(f"stop sequences of {total} bytes; at most {MAX_STOP_BYTES} are accepted", param="stop")
