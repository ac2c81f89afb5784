"""The asyncio side of one request: deltas arrive from the runner's thread into a queue.

The runner's thread never blocks on a consumer: it hands each step's deltas, for every
stream at once, to the event loop with one `call_soon_threadsafe` (`post_many`): one wake-up
of the loop per step rather than one per stream. The consumer going away (breaking out of `async for`,
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
        self.usage = Usage()  # the runner's final figures; until then, what was delivered:
        self.delivered = Usage()  # prompt tokens (set when queued) and tokens handed out so far
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._cancel = cancel
        self._done = False  # the runner sent its last item
        self._held: object = None  # the end or a failure `ready()` took off the queue
        self._consumed = False  # the consumer saw the end

    # --- called from the runner's thread ---------------------------------------------------

    def _put(self, items: list[object]) -> None:
        """On the loop: queue deltas (and possibly an exception or the end) for the consumer."""
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
        item, self._held = self._held, None
        if item is None:
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
        return self._deliver(item)

    def ready(self) -> list[Delta]:
        """The deltas already queued, without waiting: a streaming consumer writes them in
        one go (several steps' tokens pile up while the event loop serves other streams).
        Stops before the end or a failure, which the next `__anext__` reports."""
        out: list[Delta] = []
        while self._held is None and not self._consumed and not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, Delta):
                out.append(self._deliver(item))
            else:
                self._held = item
        return out

    def _deliver(self, d: Delta) -> Delta:
        """Count the tokens handed to the consumer (`delivered`)."""
        self.delivered.completion_tokens += len(d.token_ids)
        return d

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


def _put_many(batch: list[tuple[Generation, list[object]]]) -> None:
    for gen, items in batch:
        gen._put(items)


def post_many(batch: list[tuple[Generation, list[object]]]) -> None:
    """Thread-safe: deliver several streams' items with one wake-up per event loop (a
    `call_soon_threadsafe` writes to the loop's self-pipe: a syscall each)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Generation, list[object]]]] = {}
    for gen, items in batch:
        by_loop.setdefault(gen._loop, []).append((gen, items))
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_many, pairs)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass
