"""`previous_response_id` within the process: each stored response's conversation (its input
and output as chat messages), bounded, and visible only to the key that made it."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ...errors import NotFound

MAX_KEPT = 1024


class ResponseHistory:
    def __init__(self, kept: int = MAX_KEPT) -> None:
        self._kept = kept
        self._items: OrderedDict[str, tuple[str, list[dict[str, Any]]]] = OrderedDict()

    def put(self, response_id: str, owner: str, messages: list[dict[str, Any]]) -> None:
        self._items[response_id] = (owner, messages)
        while len(self._items) > self._kept:
            self._items.popitem(last=False)

    def get(self, response_id: str, owner: str) -> list[dict[str, Any]]:
        found = self._items.get(response_id)
        if found is None or found[0] != owner:
            raise NotFound(f"no response {response_id!r} (responses are kept in memory, for the key that made them, "
                           "until the server restarts)", param="previous_response_id")
        return list(found[1])
