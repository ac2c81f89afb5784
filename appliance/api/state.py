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
    ttft_s: float | None = None  # engine's time to first token (generation requests)
    decode_tokens_per_s: float | None = None  # engine's decode rate after the first token


@dataclass
class AppState:
    ready: bool = False
    draining: bool = False
    on_request: list[Callable[[RequestRecord], None]] = field(default_factory=list)
    in_flight: int = 0  # requests being handled now (the drain waits for 0)


STATE_KEY = web.AppKey("appliance_state", AppState)

# Typed per-request storage where aiohttp has it (3.14+), plain strings before.
_RequestKey = getattr(web, "RequestKey", None)


def _rkey(name: str, t: type) -> Any:
    return _RequestKey(name, t) if _RequestKey is not None else name


REQUEST_ID = _rkey("appliance_request_id", str)
INFO = _rkey("appliance_info", dict)
API_KEY = _rkey("appliance_api_key", object)


def request_info(request: web.Request) -> dict[str, Any]:
    """Per-request facts handlers fill in for the log line and the on_request hooks."""
    info = request.get(INFO)
    if info is None:
        info = request[INFO] = {
            "key_name": None,
            "model": None,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "stream": False,
            "error_code": None,
            "ttft_s": None,
            "decode_tokens_per_s": None,
        }
    return info
