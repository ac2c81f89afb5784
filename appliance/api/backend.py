"""What the HTTP layer needs from the scheduler (appliance.scheduler.Scheduler implements both).

`Backend`: a leased runner for a request's duration. `AdminBackend`: the /admin/models rows
and on-demand loads and unloads. Typed, so a renamed scheduler method fails mypy rather
than a route at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, AsyncContextManager, Protocol

from ..engine.protocol import ServingRunner

if TYPE_CHECKING:  # the scheduler (and numpy, through gguf) loads only when the daemon builds it
    from ..scheduler.core import ModelStatus


class Backend(Protocol):
    def lease(self, model: str, key: str, /, slots: int = 1) -> AsyncContextManager[ServingRunner]:
        """Wait (fairly, bounded) for `slots` slots of `model`, loading it if needed.

        Raises QueueFull, QueueTimeout, InsufficientMemory, ... (appliance.errors)."""
        ...


class AdminBackend(Backend, Protocol):
    def snapshot(self) -> list[ModelStatus]:
        """Every catalog model's row (state, memory, slots, queue)."""
        ...

    def status(self, model: str, /) -> ModelStatus:
        """One model's row (an id or alias); ModelNotFound if unknown."""
        ...

    async def load(self, model: str, /) -> None: ...

    async def unload(self, model: str, /) -> None: ...

    def set_keep_alive(self, model: str, seconds: float, /) -> None:
        """How long `model` stays loaded once idle, until it next unloads (a request's keep_alive)."""
        ...
