"""The daemon's local admin socket: live state for the CLI without an API key.

Why a unix socket: `appliance ls`/`rm` must know what the running daemon has loaded, and an
admin on the box should not need to mint an HTTP key for that. Only root and the service's
own user may use it: the socket file is mode 0600 (owner = the service user) and every
connection's peer uid is checked (SO_PEERCRED), so a loose directory or mode does not open it.

Where: `$RUNTIME_DIRECTORY/admin.sock` under systemd (/run/appliance/admin.sock), else
`<store>/admin.sock`.

Protocol: one JSON object per line each way.
  -> {"op": "status"}                 <- {"ok": true, "result": {"loaded": [...], "models": {...}, ...}}
  -> {"op": "reload"}                 <- {"ok": true, "result": {...}}
  -> {"op": "unload", "model": "id"}  <- {"ok": true, "result": {...}}
  errors                              <- {"ok": false, "error": {"code": "...", "message": "..."}}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Mapping

from ..errors import ApplianceError

log = logging.getLogger("appliance.service")

SOCKET_NAME = "admin.sock"
MAX_LINE = 64 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def admin_socket_path(store: Path, env: Mapping[str, str] | None = None) -> Path:
    """systemd's RuntimeDirectory when set (first entry), else the store directory."""
    env = os.environ if env is None else env
    runtime = env.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0]) / SOCKET_NAME
    return Path(store) / SOCKET_NAME


@contextlib.contextmanager
def short_path(path: Path) -> Iterator[str]:
    """A name for `path` that fits sun_path (108 bytes): deep store paths (tests, some
    homes) would not. On Linux a directory fd's /proc/self/fd link stands in for the dir."""
    text = str(path)
    if len(text.encode()) < 100 or not sys.platform.startswith("linux"):
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def peer_uid(sock: socket.socket) -> int | None:
    """The connecting process's uid (Linux SO_PEERCRED, macOS LOCAL_PEERCRED); None if unknown."""
    if hasattr(socket, "SO_PEERCRED"):
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", raw)
        return uid
    if sys.platform == "darwin":  # struct xucred { u_int version; uid_t uid; ... }
        raw = sock.getsockopt(0, 0x001, 76)  # SOL_LOCAL, LOCAL_PEERCRED
        return struct.unpack_from("Ii", raw)[1]
    return None


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


class AdminServer:
    """Serves the admin protocol; `handlers` maps an op name to a coroutine taking the request."""

    def __init__(
        self,
        path: Path,
        handlers: Mapping[str, Handler],
        *,
        allowed_uids: set[int] | None = None,
        mode: int = 0o600,
    ) -> None:
        self.path = Path(path)
        self.handlers = dict(handlers)
        self.allowed_uids = {0, os.getuid()} if allowed_uids is None else allowed_uids
        self.mode = mode
        self._server: asyncio.base_events.Server | None = None
        # True only once start() bound the path: close() must never unlink a socket file
        # that belongs to another (live) daemon, e.g. after our start() was refused.
        self._bound = False

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with short_path(self.path) as name:
            await self._remove_stale(name)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)  # never world-connectable, even for an instant
            try:
                sock.bind(name)
            except BaseException:
                sock.close()
                raise
            finally:
                os.umask(old)
            self._bound = True
            os.chmod(name, self.mode)
        sock.listen(16)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE)
        log.info("admin socket listening on %s", self.path)

    async def _remove_stale(self, name: str) -> None:
        """A socket file left by a killed daemon: remove it; one a live daemon answers on: refuse."""
        if not os.path.exists(name):
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(name)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(name)
            return
        finally:
            probe.close()
        raise ApplianceError(f"another daemon is already serving the admin socket {self.path}")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
        if not self._bound:
            return  # never bound it: the file (if any) is another daemon's live socket
        self._bound = False
        with contextlib.suppress(OSError), short_path(self.path) as name:
            os.unlink(name)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            uid = peer_uid(sock) if sock is not None else None
            if uid is None or uid not in self.allowed_uids:
                log.warning("admin socket: refused a connection from uid %s", uid)
                # Read the request first: closing with unread input would reset the
                # connection and the client would never see why it was refused.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(reader.readline(), 5)
                await self._send(writer, _error("forbidden", "only root and the service user may use the admin socket"))
                return
            while line := await reader.readline():
                await self._send(writer, await self._answer(line))
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # client went away or sent an over-long line
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                raise ValueError
        except ValueError:
            return _error("invalid_request", 'each line must be a JSON object with an "op"')
        handler = self.handlers.get(req["op"])
        if handler is None:
            return _error("unknown_op", f"unknown op {req['op']!r} (known: {', '.join(sorted(self.handlers))})")
        try:
            return {"ok": True, "result": await handler(req)}
        except ApplianceError as e:
            return _error(e.code, e.message)
        except Exception as e:  # the socket stays up whatever one request does
            log.exception("admin socket: %s failed", req["op"])
            return _error("internal_error", f"{type(e).__name__}: {e}")

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
        writer.write(json.dumps(obj, default=str).encode() + b"\n")
        await writer.drain()
