"""Server-sent events the way OpenAI streams them: `data: {json}\\n\\n` ... `data: [DONE]`."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..errors import ApplianceError
from .errors import error_payload
from .state import request_facts


class SSEStream:
    """One streamed response. Open it only once the first token is in hand, so a request
    that fails early still gets a real HTTP status instead of a 200 stream."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
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

    async def send(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        await self.response.write(b"data: " + data.encode("utf-8") + b"\n\n")

    async def error(self, exc: ApplianceError) -> web.StreamResponse:
        """A failure after streaming began: recorded for the request's log line (as the error
        middleware does for plain HTTP errors), one error event, then the stream ends."""
        request_facts(self.request).error_code = exc.code
        await self.send(error_payload(exc))
        await self.response.write_eof()
        return self.response

    async def done(self) -> None:
        await self.response.write(b"data: [DONE]\n\n")
        await self.response.write_eof()


class PlainSSEStream(SSEStream):
    """llama-server's native endpoints (/infill, /completion): the same events, no [DONE]."""

    async def done(self) -> None:
        await self.response.write_eof()


class NDJSONStream(SSEStream):
    """Ollama's streams: one JSON object per line; a failure is one `{"error": "..."}` line."""

    def __init__(self, request: web.Request) -> None:
        super().__init__(request)
        self.response.headers["Content-Type"] = "application/x-ndjson"

    async def send(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        await self.response.write(data.encode("utf-8") + b"\n")

    async def error(self, exc: ApplianceError) -> web.StreamResponse:
        request_facts(self.request).error_code = exc.code
        await self.send({"error": exc.message})
        await self.response.write_eof()
        return self.response

    async def done(self) -> None:
        await self.response.write_eof()


class EventSSEStream(PlainSSEStream):
    """The Responses API's stream: `event: TYPE` before each event's data, no [DONE]."""

    async def send(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        await self.response.write(f"event: {obj.get('type', 'message')}\n".encode() + b"data: " + data.encode("utf-8") + b"\n\n")

    async def error(self, exc: ApplianceError) -> web.StreamResponse:
        request_facts(self.request).error_code = exc.code
        await self.send({"type": "error", "code": exc.code, "message": exc.message, "param": exc.param})
        await self.response.write_eof()
        return self.response
