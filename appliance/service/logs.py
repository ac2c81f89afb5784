"""Logs: one line per request, text or JSON (`server.log_format`), to stderr (journald).

Why here and not in the middleware: the line's fields are an operations contract (what
log shippers parse), and JSON mode needs the fields themselves, not a formatted message.
The request line carries the API key's *name*, never the token (RequestRecord has no
token to leak). Every other log record gets the same treatment: `log_format = "json"`
means every line on stderr is one JSON object.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

request_log = logging.getLogger("appliance.request")
_HANDLER_MARK = "_appliance_handler"


def request_fields(record: Any) -> dict[str, Any]:
    """The per-request fields, from an api.state.RequestRecord."""
    return {
        "request_id": record.request_id,
        "method": record.method,
        "path": record.path,
        "status": record.status,
        "key": record.key_name,
        "model": record.model,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "latency_s": round(record.latency_s, 4),
        "stream": record.stream,
        "error": record.error_code,
    }


def log_request(record: Any) -> None:
    """The on_request hook: one log line per finished request."""
    f = request_fields(record)
    request_log.info(
        "%s %s %d %.3fs key=%s model=%s tokens=%d+%d%s",
        f["method"], f["path"], f["status"], f["latency_s"], f["key"] or "-", f["model"] or "-",
        f["prompt_tokens"], f["completion_tokens"], f" error={f['error']}" if f["error"] else "",
        extra={"fields": f},
    )


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields.get("request_id"):
            record.request_id = fields["request_id"]
        elif not hasattr(record, "request_id"):
            record.request_id = "-"
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, request_id, message, then the
    record's structured `fields` (requests) and the exception text if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(log_format: str = "text", stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Install (or replace) the appliance's handler on the root logger."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_MARK, False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    try:
        from ..api.state import RequestIdFilter

        handler.addFilter(RequestIdFilter())
    except ImportError:  # pragma: no cover - the API package is part of every install
        pass
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
