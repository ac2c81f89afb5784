"""The admin socket: line-delimited JSON over a real unix socket, only root and the service
user (SO_PEERCRED checked per connection), and the CLI's `loaded_models` client."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import socket
import tempfile
from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.errors import AdminRequestFailed, ApplianceError, DaemonUnreachable, ModelNotFound
from appliance.service import adminclient
from appliance.service.adminsock import AdminServer, admin_socket_path


def handlers(unloaded: list[str]) -> dict:
    async def status(req: dict) -> dict:
        return {"loaded": ["tiny-a"], "models": {"tiny-a": {"state": "loaded"}, "tiny-b": {"state": "unloaded"}}}

    async def reload(req: dict) -> dict:
        return {"models": 2}

    async def unload(req: dict) -> dict:
        if req.get("model") != "tiny-a":
            raise ModelNotFound(f"model {req.get('model')!r} is not loaded")
        unloaded.append(req["model"])
        return {"unloaded": req["model"]}

    return {"status": status, "reload": reload, "unload": unload}


def test_socket_path_rules(tmp_path: Path) -> None:
    assert admin_socket_path(tmp_path, {}) == tmp_path / "admin.sock"
    assert admin_socket_path(tmp_path, {"RUNTIME_DIRECTORY": "/run/appliance"}) == Path("/run/appliance/admin.sock")


async def test_round_trip_and_loaded_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "a-rather-long-directory-name-to-exceed-sun-path" / ("x" * 40) / "store"
    monkeypatch.setenv("APPLIANCE_STORE", str(store))
    settings = load_settings()
    assert await asyncio.to_thread(adminclient.loaded_models, settings) is None  # no daemon yet

    unloaded: list[str] = []
    server = AdminServer(admin_socket_path(store), handlers(unloaded))
    await server.start()
    try:
        path = store / "admin.sock"
        assert len(str(path)) > 108 and path.is_socket()
        assert path.stat().st_mode & 0o777 == 0o600
        assert await asyncio.to_thread(adminclient.loaded_models, settings) == {"tiny-a"}
        assert await asyncio.to_thread(adminclient.reload, settings) == {"models": 2}
        assert await asyncio.to_thread(adminclient.unload, settings, "tiny-a") == {"unloaded": "tiny-a"}
        assert unloaded == ["tiny-a"]
        with pytest.raises(AdminRequestFailed) as e:
            await asyncio.to_thread(adminclient.unload, settings, "nope")
        assert e.value.code == "model_not_found"
        with pytest.raises(AdminRequestFailed) as e:
            await asyncio.to_thread(adminclient.request, path, "frobnicate")
        assert e.value.code == "unknown_op"
        # A second daemon on the same socket is refused while the first lives.
        with pytest.raises(ApplianceError, match="already serving"):
            await AdminServer(path, {}).start()
    finally:
        await server.close()
    assert not (store / "admin.sock").exists()
    assert await asyncio.to_thread(adminclient.loaded_models, settings) is None


async def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: a killed daemon's leftover
    assert await asyncio.to_thread(adminclient.request, path, "status") is None
    server = AdminServer(path, handlers([]))
    await server.start()
    try:
        result = await asyncio.to_thread(adminclient.request, path, "status")
        assert result is not None and result["loaded"] == ["tiny-a"]
    finally:
        await server.close()


async def test_a_refused_or_unstarted_server_leaves_the_live_socket(tmp_path: Path) -> None:
    """A second `serve` that is refused (or never got to start) must not delete the live
    daemon's socket on close: `appliance rm` relies on it to see loaded models."""
    path = tmp_path / "admin.sock"
    live = AdminServer(path, handlers([]))
    await live.start()
    try:
        refused = AdminServer(path, {})
        with pytest.raises(ApplianceError, match="already serving"):
            await refused.start()
        await refused.close()
        await AdminServer(path, {}).close()  # never started (e.g. the HTTP bind failed first)
        assert path.is_socket()
        result = await asyncio.to_thread(adminclient.request, path, "status")
        assert result is not None and result["loaded"] == ["tiny-a"]
    finally:
        await live.close()
    assert not path.exists()


async def test_garbage_line_gets_an_error(tmp_path: Path) -> None:
    server = AdminServer(tmp_path / "admin.sock", handlers([]))
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "admin.sock"))
        writer.write(b"status\n")
        reply = json.loads(await reader.readline())
        assert reply["ok"] is False and reply["error"]["code"] == "invalid_request"
        writer.write(b'{"op": "status"}\n')  # the connection survives a bad line
        assert json.loads(await reader.readline())["ok"] is True
        writer.close()
    finally:
        await server.close()


def _connect_as(uid: int, gid: int, path: str) -> tuple[str, str]:
    """Fork, drop to uid/gid, connect and read one line; returns (outcome, detail)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: stdlib only, then _exit
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            try:
                s.connect(path)
                s.sendall(b'{"op": "status"}\n')
                out = "answer:" + s.makefile("rb").readline().decode()
            except PermissionError:
                out = "eacces:"
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        outcome, _, detail = f.read().partition(":")
    return outcome, detail


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
async def test_other_uid_is_refused() -> None:
    nobody = pwd.getpwnam("nobody")
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        os.chmod(d, 0o755)
        # mode 0666 so the file permission does not stop `nobody`: the uid check must.
        path = Path(d) / "admin.sock"
        server = AdminServer(path, handlers([]), mode=0o666)
        await server.start()
        try:
            outcome, detail = await asyncio.to_thread(_connect_as, nobody.pw_uid, nobody.pw_gid, str(path))
            assert outcome == "answer"
            reply = json.loads(detail)
            assert reply["ok"] is False and reply["error"]["code"] == "forbidden"
            # root (this process) is allowed on the same socket
            assert (await asyncio.to_thread(adminclient.request, path, "status"))["loaded"] == ["tiny-a"]
        finally:
            await server.close()

        server = AdminServer(path, handlers([]))  # the default mode, 0600
        await server.start()
        try:
            outcome, _ = await asyncio.to_thread(_connect_as, nobody.pw_uid, nobody.pw_gid, str(path))
            assert outcome == "eacces"
        finally:
            await server.close()


def test_permission_denied_is_a_clear_error(tmp_path: Path) -> None:
    """The client's side of a refusal: one clear error, not a traceback."""
    path = tmp_path / "admin.sock"

    async def main() -> None:
        server = AdminServer(path, handlers([]), allowed_uids=set())  # nobody allowed
        await server.start()
        try:
            with pytest.raises(DaemonUnreachable, match="only root and the service user"):
                await asyncio.to_thread(adminclient.request, path, "status")
        finally:
            await server.close()

    asyncio.run(main())
