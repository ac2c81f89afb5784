"""The asyncio side of one request: deltas arrive from the runner's thread into a queue.

The runner's thread never blocks on a consumer: it hands batches of deltas to the event
loop with `call_soon_threadsafe`. The consumer going away (breaking out of `async for`,
`aclose()`, task cancellation, garbage collection) cancels the request; the runner frees
its slots at its next step.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

from .types import Delta, Usage

_END = object()


class Generation:
    """Async iterator of `Delta`s for one request; `usage` is complete once iteration ends.

    Raises `EngineError` from iteration if llama.cpp failed for this request (e.g. its KV
    cache slot could not be allocated); deltas delivered before stay valid.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int, cancel: Callable[[], None], request_id: str = "") -> None:
        self.request_id = request_id
        self.n = n
        self.usage = Usage()
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._cancel = cancel
        self._done = False  # the runner sent its last item
        self._consumed = False  # the consumer saw the end

    # --- called from the runner's thread ---------------------------------------------------

    def _post(self, items: list[object]) -> None:
        """Thread-safe: queue deltas (and possibly an exception or the end) for the consumer."""
        try:
            self._loop.call_soon_threadsafe(self._put, items)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    def _put(self, items: list[object]) -> None:
        for it in items:
            if isinstance(it, Usage):
                self.usage = it  # set before the end marker is seen
            else:
                self._queue.put_nowait(it)

    # --- consumer side ----------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._consumed

    async def __anext__(self) -> Delta:
        if self._consumed:
            raise StopAsyncIteration
        try:
            item = await self._queue.get()
        except BaseException:
            self.cancel()
            raise
        if item is _END:
            self._consumed = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._consumed = True
            raise item
        assert isinstance(item, Delta)
        return item

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delta]:
        # An async generator: leaving `async for` early closes it, which cancels the request.
        try:
            while True:
                try:
                    d = await self.__anext__()
                except StopAsyncIteration:
                    return
                yield d
        finally:
            if not self._consumed:
                self.cancel()

    def cancel(self) -> None:
        """Stop generating; safe from any thread, idempotent, a no-op once finished."""
        if not self._consumed:
            self._cancel()

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> "Generation":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()

    async def collect(self) -> list[str]:
        """Run to the end; return each choice's whole text (non-streaming callers)."""
        texts = [""] * self.n
        async for d in self:
            texts[d.index] += d.text
        return texts

    def __del__(self) -> None:
        if not self._consumed:
            try:
                self._cancel()
            except Exception:
                pass
