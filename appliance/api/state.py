"""What the daemon and the operations layer share with the HTTP app at run time.

`ready` and `draining` are flipped by the daemon (and the SIGTERM drain); `on_request`
hooks get one `RequestRecord` per finished request (metrics, audit), called from the
request-id middleware after the response is complete (streams included).
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

from ..engine.types import Usage

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds `record.request_id` (the current request's id, or '-') to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


@dataclass
class RequestFacts:
    """What handlers learn about one request while serving it (who, which model, tokens),
    read once by the request-context middleware for the log line and the on_request hooks."""

    key_name: str | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stream: bool = False
    error_code: str | None = None
    ttft_s: float | None = None
    decode_tokens_per_s: float | None = None

    def add_usage(self, u: Usage) -> None:
        """Add one Generation's usage. A request with several prompts keeps the first TTFT (the
        client waited for that one) and the last decode rate."""
        self.prompt_tokens += u.prompt_tokens
        self.completion_tokens += u.completion_tokens
        if self.ttft_s is None:
            self.ttft_s = u.ttft_s
        if u.decode_tokens_per_s:
            self.decode_tokens_per_s = u.decode_tokens_per_s


@dataclass(kw_only=True)
class RequestRecord(RequestFacts):
    """One finished request, as the on_request hooks (metrics, audit) get it."""

    request_id: str
    method: str
    path: str
    status: int
    latency_s: float


@dataclass
class AppState:
    ready: bool = False
    draining: bool = False
    on_request: list[Callable[[RequestRecord], None]] = field(default_factory=list)
    in_flight: int = 0  # requests being handled now (the drain waits for 0)
    streams: set[Any] = field(default_factory=set)  # open SSE streams (sse.SSEStream)


STATE_KEY = web.AppKey("appliance_state", AppState)

# Typed per-request storage where aiohttp has it (3.14+), plain strings before.
_RequestKey = getattr(web, "RequestKey", None)


def _rkey(name: str, t: type) -> Any:
    return _RequestKey(name, t) if _RequestKey is not None else name


REQUEST_ID = _rkey("appliance_request_id", str)
FACTS = _rkey("appliance_facts", RequestFacts)
API_KEY = _rkey("appliance_api_key", object)


def request_facts(request: web.Request) -> RequestFacts:
    """This request's facts, made on first use."""
    facts = request.get(FACTS)
    if facts is None:
        facts = request[FACTS] = RequestFacts()
    return facts
