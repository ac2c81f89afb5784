"""How `ps`, `stop` and `run` reach a running daemon: its admin socket on this machine (root or
the service user, no key needed), or a URL and API key (`--url`/`--key`, `APPLIANCE_URL` /
`APPLIANCE_API_KEY`) for a daemon elsewhere or under another user.

Plain urllib: the CLI needs a handful of JSON calls and one server-sent-event stream.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Iterator

from ..config import Settings
from ..errors import AdminRequestFailed, DaemonUnreachable
from ..service import adminclient

TIMEOUT_S = 600.0  # a first request may wait for a load; the daemon bounds waits itself


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("APPLIANCE_URL"),
                   help="a daemon's base URL (default: APPLIANCE_URL, else the local daemon's admin socket)")
    p.add_argument("--key", default=os.environ.get("APPLIANCE_API_KEY"),
                   help="API key for --url or a daemon with keys (default: APPLIANCE_API_KEY)")


@dataclass
class Link:
    """A running daemon: its HTTP base URL, the key to send, and its admin socket if local."""

    url: str
    key: str | None
    local: Settings | None = None  # set when found through the admin socket

    def models(self) -> list[dict[str, Any]]:
        """/admin/models rows (the admin socket's status when local: no admin key needed)."""
        if self.local is not None:
            status = adminclient.status(self.local) or {}
            return list((status.get("models") or {}).values())
        return list(self.call("GET", "/admin/models").get("data", []))

    def unload(self, model: str) -> None:
        if self.local is not None:
            adminclient.unload(self.local, model)
        else:
            self.call("POST", f"/admin/models/{urllib.parse.quote(model, safe='')}/unload")

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> urllib.request.Request:
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        data = None if body is None else json.dumps(body).encode()
        return urllib.request.Request(self.url.rstrip("/") + path, data=data, method=method, headers=headers)

    def _open(self, req: urllib.request.Request) -> Any:
        try:
            return urllib.request.urlopen(req, timeout=TIMEOUT_S)
        except urllib.error.HTTPError as e:
            try:
                err = json.loads(e.read()).get("error") or {}
            except ValueError:
                err = {}
            code, message = err.get("code") or f"http_{e.code}", err.get("message") or f"HTTP {e.code}"
            if e.code == 401:
                message += " (give an API key with --key or APPLIANCE_API_KEY)"
            raise AdminRequestFailed(code, message) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DaemonUnreachable(f"cannot reach {self.url}: {reason}") from None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        with self._open(self._request(method, path, body)) as r:
            return json.loads(r.read() or b"{}")

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The events of a streamed /v1 call, parsed; ends at `[DONE]`. An error event raises."""
        with self._open(self._request("POST", path, {**body, "stream": True})) as r:
            for raw in r:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    err = event["error"]
                    raise AdminRequestFailed(err.get("code") or "error", err.get("message") or "stream failed")
                yield event


def connect(args: argparse.Namespace, settings: Settings) -> Link | None:
    """The daemon named by --url, else the local one (admin socket), else None."""
    if getattr(args, "url", None):
        return Link(args.url, args.key)
    status = adminclient.status(settings)
    if status is None:
        return None
    return Link(local_url(str(status.get("url"))), getattr(args, "key", None), local=settings)


def local_url(url: str) -> str:
    """A daemon listening on every address (0.0.0.0, ::) is reached on this machine over loopback."""
    for wildcard, loopback in (("://0.0.0.0:", "://127.0.0.1:"), ("://[::]:", "://[::1]:")):
        url = url.replace(wildcard, loopback)
    return url
