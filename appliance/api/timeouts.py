"""Read and write deadlines for one request: a client may not hold a handler, a queue place
or decode slots by sending or reading slowly (issue 13: a stream whose reader stopped kept
4 slots busy for as long as it held the socket)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from ..errors import RequestTimeout


@dataclass(frozen=True)
class Timeouts:
    body_s: float = 30.0  # server.body_timeout
    write_s: float = 30.0  # server.write_timeout


TIMEOUTS_KEY = web.AppKey("timeouts", Timeouts)


def timeouts(request: web.Request) -> Timeouts:
    return request.app.get(TIMEOUTS_KEY) or Timeouts()


async def read_body(request: web.Request) -> bytes:
    """The whole body, or 408 (and the connection closed) when it takes longer than body_s."""
    limit = timeouts(request).body_s
    try:
        async with asyncio.timeout(limit):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {limit:g}s (server.body_timeout)") from None


async def write_within(request: web.Request, response: web.StreamResponse, data: bytes | None) -> None:
    """Write part of a streamed response (None: its end); a client that has not taken it within write_s
    loses the connection, and the handler is cancelled like on a disconnect (its finally
    blocks free the engine's slots and the scheduler's lease)."""
    try:
        async with asyncio.timeout(timeouts(request).write_s):
            await (response.write(data) if data is not None else response.write_eof())
    except TimeoutError:
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise asyncio.CancelledError("the client stopped reading (server.write_timeout)") from None
