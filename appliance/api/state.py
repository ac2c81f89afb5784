"""What the daemon and the operations layer share with the HTTP app at run time.

`ready` and `draining` are flipped by the daemon (and the SIGTERM drain); `on_request`
hooks get one `RequestRecord` per finished request (metrics, audit), called from the
request-id middleware after the response is complete (streams included).
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass, field
from typing import Callable

from aiohttp import web

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds `record.request_id` (the current request's id, or '-') to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


@dataclass
class RequestRecord:
    request_id: str
    method: str
    path: str
    key_name: str | None  # None: no key (open mode or refused before auth)
    model: str | None
    status: int
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    stream: bool = False
    error_code: str | None = None


@dataclass
class AppState:
    ready: bool = False
    draining: bool = False
    on_request: list[Callable[[RequestRecord], None]] = field(default_factory=list)
    in_flight: int = 0  # requests being handled now (the drain waits for 0)


STATE_KEY = web.AppKey("appliance_state", AppState)


def request_info(request: web.Request) -> dict:
    """Per-request facts handlers fill in for the log line and the on_request hooks."""
    info = request.get("appliance_info")
    if info is None:
        info = request["appliance_info"] = {
            "key_name": None,
            "model": None,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "stream": False,
            "error_code": None,
        }
    return info
