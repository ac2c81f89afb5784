"""Server-sent events the way OpenAI streams them: `data: {json}\\n\\n` ... `data: [DONE]`,
and the other framings the same relay streams in (subclasses change only the framing):
llama-server's native SSE without [DONE], the Responses API's `event:` lines, Ollama's NDJSON."""

from __future__ import annotations

import json
import math
import time
from typing import Any, Sequence

import orjson
from aiohttp import web

from ..errors import ApplianceError, InvalidAPIKey
from .context import KEYRING_KEY, api_key
from .errors import error_payload
from .state import STATE_KEY, request_facts
from .timeouts import write_within


class SSEStream:
    """One streamed response. Open it only once the first token is in hand, so a request
    that fails early still gets a real HTTP status instead of a 200 stream."""

    KEY_CHECK_S = 1.0  # how often a stream re-checks its key: revocation ends it within this

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self._key = api_key(request)
        self._key_checked = time.monotonic()
        self.ended = False  # error() or done() sent the end: later sends are dropped
        self.response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # proxies: do not buffer the stream
            },
        )

    async def open(self) -> None:
        await self.response.prepare(self.request)
        self._streams().add(self)

    def _streams(self) -> set[Any]:
        state = self.request.app.get(STATE_KEY)
        return state.streams if state is not None else set()

    closing = b"data: [DONE]\n\n"  # written before the end of a stream that completed

    @staticmethod
    def encode(obj: dict[str, Any]) -> bytes:
        """Compact UTF-8 JSON. orjson: a stream chunk in 0.5 µs where json.dumps took 8
        (docs/engine.md); the same bytes, except that a non-finite float is null, not the
        invalid `-Infinity`. Anything orjson cannot encode (an int past 64 bits) goes through
        json, non-finite floats made null there too."""
        try:
            return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:
            return json.dumps(_finite(obj), ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def frame(self, obj: dict[str, Any]) -> bytes:
        return b"data: " + self.encode(obj) + b"\n\n"

    def error_event(self, exc: ApplianceError) -> dict[str, Any]:
        return error_payload(exc)

    async def send(self, obj: dict[str, Any]) -> None:
        await self.send_many([obj])

    async def send_many(self, objs: list[dict[str, Any]]) -> None:
        """Several events in one write (one syscall, one drain wait) rather than one each."""
        self._check_key()
        await self._write(objs)

    def _check_key(self) -> None:
        """A revoked key's stream ends (the relay turns this into an error event)."""
        now = time.monotonic()
        if self._key is None or self.ended or now - self._key_checked < self.KEY_CHECK_S:
            return
        self._key_checked = now
        keyring = self.request.app.get(KEYRING_KEY)
        if keyring is not None and not keyring.active(self._key):
            raise InvalidAPIKey(f"the API key {self._key.name!r} was revoked")

    async def _write(self, objs: list[dict[str, Any]]) -> None:
        if not self.ended and objs:
            await write_within(self.request, self.response, b"".join(map(self.frame, objs)))

    async def error(self, exc: ApplianceError) -> web.StreamResponse:
        """A failure after streaming began: recorded for the request's log line (as the error
        middleware does for plain HTTP errors), one error event, then the stream ends."""
        if not self.ended:
            request_facts(self.request).error_code = exc.code
            await self._write([self.error_event(exc)])
            self._end()
            await write_within(self.request, self.response, None)
        return self.response

    async def done(self, last: Sequence[dict[str, Any]] = ()) -> None:
        """End a stream that completed: `last` events (the usage chunk) and the closing in one write."""
        if self.ended:
            return
        tail = b"".join(map(self.frame, last)) + self.closing
        self._end()
        if tail:
            await write_within(self.request, self.response, tail)
        await write_within(self.request, self.response, None)

    def _end(self) -> None:
        self.ended = True
        self._streams().discard(self)


def _finite(obj: Any) -> Any:
    """`obj` with every non-finite float as None (numpy scalars as Python numbers): what
    orjson writes, for json's slow path, which would write the invalid `NaN`/`-Infinity`."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if getattr(obj, "shape", None) == () and hasattr(obj, "item"):  # a numpy scalar
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


class PlainSSEStream(SSEStream):
    """llama-server's native endpoints (/infill): the same events, no [DONE]."""

    closing = b""


class EventSSEStream(PlainSSEStream):
    """The Responses API's stream: `event: TYPE` before each event's data, no [DONE]."""

    def frame(self, obj: dict[str, Any]) -> bytes:
        return f"event: {obj.get('type', 'message')}\n".encode() + super().frame(obj)

    def error_event(self, exc: ApplianceError) -> dict[str, Any]:
        return {"type": "error", "code": exc.code, "message": exc.message, "param": exc.param}


class NDJSONStream(SSEStream):
    """Ollama's streams: one JSON object per line; a failure is one `{"error": "..."}` line."""

    closing = b""

    def __init__(self, request: web.Request) -> None:
        super().__init__(request)
        self.response.headers["Content-Type"] = "application/x-ndjson"

    def frame(self, obj: dict[str, Any]) -> bytes:
        return self.encode(obj) + b"\n"

    def error_event(self, exc: ApplianceError) -> dict[str, Any]:
        return {"error": exc.message}


async def end_streams(streams: set[Any], exc: ApplianceError) -> int:
    """End every open stream with `exc` as its error event (the drain timeout passed): the
    client sees why and a proper end, not a body cut mid-way. Returns how many were ended."""
    n = 0
    for s in list(streams):
        try:
            await s.error(exc)
            n += 1
        except Exception:  # that client is gone already
            s._end()
    return n
