"""`appliance serve` as a process: listens, answers, exits 0 on SIGTERM; refuses to listen
beyond loopback without keys (exit 2, one line saying how to create one)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Iterator

from appliance.auth import create_key
from test_api_support import write_config

ROOT = Path(__file__).resolve().parents[1]  # the package, importable without installing


def _serve(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve", "--config", str(tmp_path / "appliance.toml"),
         "--models", str(tmp_path / "models.toml"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)},
    )


def test_serve_refuses_non_loopback_without_keys(tmp_path: Path) -> None:
    write_config(tmp_path, {})
    p = _serve(tmp_path, "--host", "0.0.0.0", "--port", "0")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "appliance keys create admin --scope admin" in lines[0]


def test_serve_listens_and_stops_on_sigterm(tmp_path: Path) -> None:
    write_config(tmp_path, {"m": {"source": "file:///nonexistent/m.gguf"}})
    with _running(_serve(tmp_path, "--port", "0")) as p:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert "serving on http://127.0.0.1:" in line, line
        url = line.rsplit(" ", 1)[-1].strip()
        with urllib.request.urlopen(url + "/health", timeout=10) as r:
            assert r.status == 200
        assert p.stderr is not None
        logged = _until(p, "catalog: ")
        assert f"config: {tmp_path / 'appliance.toml'}; catalog: {tmp_path / 'models.toml'}; keys: {tmp_path / 'keys.toml'}; store: {tmp_path / 'store'}" in logged
        assert "has no models" not in logged
        with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:  # open: loopback, no keys
            assert [m["id"] for m in json.load(r)["data"]] == ["m"]
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 0


@contextlib.contextmanager
def _running(p: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """`p`, killed on the way out if a failed assertion left it running."""
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _until(p: subprocess.Popen[str], text: str) -> str:
    """stderr lines up to and including the first holding `text`."""
    assert p.stderr is not None
    seen = ""
    for line in p.stderr:
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never logged:\n{seen}")


def test_serve_warns_when_the_catalog_is_empty(tmp_path: Path) -> None:
    write_config(tmp_path, {})
    with _running(_serve(tmp_path, "--port", "0")) as p:
        logged = _until(p, "has no models")
        assert f"the catalog {tmp_path / 'models.toml'} has no models" in logged and "appliance pull" in logged
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 0


def test_serve_on_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    write_config(tmp_path, {})
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        p = _serve(tmp_path, "--port", str(port))
        out, err = p.communicate(timeout=60)
    assert p.returncode == 1, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == [f"appliance: error: cannot listen on 127.0.0.1:{port}: address already in use"]
    assert "serving on" not in out


def test_serve_on_an_address_not_ours_is_a_config_error(tmp_path: Path) -> None:
    """A host this machine does not have: exit 2 (systemd does not restart config errors)."""
    write_config(tmp_path, {})
    create_key(tmp_path / "keys.toml", "admin", scope="admin")  # not loopback: keys required
    p = _serve(tmp_path, "--host", "192.0.2.1", "--port", "0")  # TEST-NET-1, never local
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]  # before it: the log's "keys file read"
    assert lines[-1] == "appliance: error: cannot listen on 192.0.2.1:0: cannot assign requested address"
