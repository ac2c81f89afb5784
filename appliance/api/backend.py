"""What the HTTP layer needs from the scheduler: a leased runner for the request's duration."""

from __future__ import annotations

from typing import Any, AsyncContextManager, Protocol


class Backend(Protocol):
    def lease(self, model_id: str, key_name: str, *, slots: int = 1) -> AsyncContextManager[Any]:
        """Wait (fairly, bounded) for `slots` slots of `model_id`, loading it if needed.

        Raises QueueFull, QueueTimeout, InsufficientMemory, ... (appliance.errors)."""
        ...
