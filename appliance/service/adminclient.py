"""The CLI's side of the admin socket (see adminsock.py for the protocol).

`loaded_models(settings)` is what `appliance ls`/`rm` inject: the set of model ids the
running daemon has loaded, or None when no daemon is running.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path
from typing import Any, Mapping

from ..config import Settings
from ..errors import AdminRequestFailed, DaemonUnreachable
from .adminsock import admin_socket_path, short_path

TIMEOUT_S = 30.0  # a status answer is immediate; unload waits for in-flight requests


SYSTEMD_SOCKET = Path("/run/appliance/admin.sock")
SYSTEMD_STORE = Path("/var/lib/appliance")


def socket_path(settings: Settings, env: Mapping[str, str] | None = None) -> Path:
    """Where the daemon serving this store listens. An admin's shell has no
    RUNTIME_DIRECTORY, so for the systemd store we look where systemd puts the socket."""
    env = os.environ if env is None else env
    if not env.get("RUNTIME_DIRECTORY") and settings.config.store.path == SYSTEMD_STORE:
        return SYSTEMD_SOCKET
    return admin_socket_path(settings.config.store.path, env)


def request(path: Path, op: str, **args: Any) -> dict[str, Any] | None:
    """Send one request; the result, or None when no daemon listens at `path`."""
    if not path.parent.is_dir():
        return None
    with short_path(path) as name, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT_S)
        try:
            sock.connect(name)
        except (FileNotFoundError, ConnectionRefusedError):
            return None  # no daemon, or a stale socket file of a dead one
        except PermissionError:
            raise DaemonUnreachable(
                f"permission denied on {path}: run as root or the service user to ask the daemon"
            ) from None
        try:
            sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            answer = sock.makefile("rb").readline()
        except OSError as e:
            if e.errno in (errno.ECONNRESET, errno.EPIPE):
                answer = b""
            else:
                raise DaemonUnreachable(f"admin socket {path}: {e}") from None
    if not answer:
        raise DaemonUnreachable(f"the daemon closed the admin socket {path} without answering")
    reply = json.loads(answer)
    if not reply.get("ok"):
        err = reply.get("error") or {}
        code, message = err.get("code", "error"), err.get("message", "request failed")
        if code == "forbidden":
            raise DaemonUnreachable(f"admin socket {path}: {message}")
        raise AdminRequestFailed(code, message)
    return reply.get("result") or {}


def status(settings: Settings) -> dict[str, Any] | None:
    return request(socket_path(settings), "status")


def loaded_models(settings: Settings) -> set[str] | None:
    """Model ids the running daemon has loaded (or is loading); None when none runs."""
    result = status(settings)
    if result is None:
        return None
    return set(result.get("loaded", []))


def reload(settings: Settings) -> dict[str, Any] | None:
    return request(socket_path(settings), "reload")


def unload(settings: Settings, model: str) -> dict[str, Any] | None:
    return request(socket_path(settings), "unload", model=model)
