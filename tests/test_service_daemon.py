"""The real `appliance serve` as systemd runs it: a spawned process with NOTIFY_SOCKET and
WATCHDOG_USEC, a tiny model, real HTTP. Synchronised on notify datagrams and received
chunks; socket timeouts are only a safety net."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest

from appliance.config import load_settings
from appliance.service import adminclient
from cli_support import Ran, run_cli_env

ROOT = Path(__file__).resolve().parent.parent
SAFETY_S = 60  # never reached when things work


class Notifications:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET; remembers all it got.

    A thread receives all the time, as systemd does. Reading only inside `until` would
    let the socket's queue fill up while a test does other things (it holds
    net.unix.max_dgram_qlen datagrams, 10 by default, a few seconds of heartbeats), and
    then the daemon's next sd_notify send blocks its event loop: a long stream stalls."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = path
        self.seen: list[str] = []
        self._consumed = 0  # how much of `seen` earlier `until` calls went through
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._receive, daemon=True)
        self._reader.start()

    def _receive(self) -> None:
        while m := self.sock.recv(4096):  # b"" once close() shuts the socket down
            with self._cond:
                self.seen.append(m.decode())
                self._cond.notify_all()

    def until(self, message: str) -> list[str]:
        """Wait for `message` (exact, or a prefix ending in '=') among the messages after
        those earlier calls went through; returns them, up to and including it."""

        def match(m: str) -> bool:
            return m == message or (message.endswith("=") and m.startswith(message))

        def found() -> int | None:
            return next((i for i in range(self._consumed, len(self.seen)) if match(self.seen[i])), None)

        with self._cond:
            if not self._cond.wait_for(lambda: found() is not None, timeout=SAFETY_S):
                raise TimeoutError(f"no {message!r} from the daemon; got {self.seen[self._consumed:]}")
            end = found() + 1  # type: ignore[operator]
            got, self._consumed = self.seen[self._consumed:end], end
            return got

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(SAFETY_S)
        self.sock.close()


class Served:
    def __init__(self, proc: subprocess.Popen[str], url: str, notify: Notifications,
                 cli: Callable[..., Ran]) -> None:
        self.proc, self.url, self.notify = proc, url, notify
        self.cli = cli  # `appliance ARGS` in this process, on the daemon's config and store

    def get(self, path: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
        return self._send(urllib.request.Request(self.url + path), token)

    def post(self, path: str, body: dict, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST")
        req.add_header("Content-Type", "application/json")
        return self._send(req, token)

    @staticmethod
    def _send(req: urllib.request.Request, token: str | None) -> tuple[int, dict[str, str], bytes]:
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=SAFETY_S) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(SAFETY_S)


def write_catalog(path: Path, models: dict[str, Path]) -> None:
    path.write_text("".join(
        f'[{mid}]\nsource = "file://{p}"\ncontext = 4096\nparallel = 2\n\n' for mid, p in models.items()
    ))


@pytest.fixture
def served(tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    write_catalog(tmp_path / "models.toml", {"tiny": tiny_models["a"]})
    # A generous drain: a drain ends as soon as the last request finishes, and on a loaded
    # machine a 3000-token stream took over 90 s here (the 30 s default would cancel it).
    (tmp_path / "appliance.toml").write_text('[server]\ndrain_timeout = "10m"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "NOTIFY_", "WATCHDOG_"))}
    env.update(
        PYTHONPATH=str(ROOT), APPLIANCE_STORE=str(tmp_path / "store"),
        NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="2000000",
    )
    notify = Notifications(tmp_path / "notify.sock")
    cli = functools.partial(run_cli_env, monkeypatch, {"APPLIANCE_STORE": str(tmp_path / "store")})
    pull = cli("pull", "tiny")  # the cwd is tmp_path (isolated_env), as the daemon's
    assert pull.returncode == 0, pull.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve", "--port", "0"], env=env, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=open(tmp_path / "serve.log", "w"), text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "serving on" in line, (tmp_path / "serve.log").read_text()
        yield Served(proc, line.split("serving on ")[1].strip(), notify, cli)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


def test_notify_sequence_and_clean_exit(served: Served) -> None:
    served.notify.until("READY=1")
    served.notify.until("STATUS=")  # serving, with the loaded models and queue
    served.notify.until("WATCHDOG=1")  # the heartbeat goes on after READY
    assert served.stop() == 0
    served.notify.until("STOPPING=1")
    seen = served.notify.seen
    order = [seen.index("READY=1")]
    order.append(next(i for i, m in enumerate(seen) if i > order[-1] and m.startswith("STATUS=serving")))
    order.append(next(i for i, m in enumerate(seen) if i > order[-1] and m == "WATCHDOG=1"))
    order.append(seen.index("STOPPING=1"))
    assert order == sorted(order)
    assert seen.count("READY=1") == 1
    print("notify sequence:", seen)


def _raw_stream(url: str, body: dict) -> socket.socket:
    """A streaming request on a plain socket, so the test reads it chunk by chunk."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=SAFETY_S)
    data = json.dumps(body).encode()
    s.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data
    )
    return s


def test_sigterm_drains_a_stream_and_refuses_new_requests(served: Served) -> None:
    served.notify.until("READY=1")
    body = {
        # No EOS (logit_bias): exactly 3000 tokens, seconds of work after the first chunk.
        "model": "tiny", "prompt": "hello", "max_tokens": 3000, "stream": True,
        "logit_bias": {"2": -100}, "temperature": 0,
    }
    stream = _raw_stream(served.url, body)
    first = b""
    while b"data: " not in first:
        first += stream.recv(1024)  # the stream has started
    served.proc.send_signal(signal.SIGTERM)
    served.notify.until("STOPPING=1")  # draining is set in the same loop step

    status, headers, err = served.post("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 1})
    assert status == 503 and json.loads(err)["error"]["code"] == "draining"
    assert headers.get("Connection", "").lower() == "close"
    assert served.get("/ready")[0] == 503
    assert served.get("/health")[0] == 200

    rest = first
    while chunk := stream.recv(65536):
        rest += chunk
    stream.close()
    assert b"data: [DONE]" in rest
    assert rest.count(b'"finish_reason":"length"') == 1  # completed, not cut off
    assert served.proc.wait(SAFETY_S) == 0


def test_keys_and_models_reread_without_restart(served: Served, tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    served.notify.until("READY=1")
    admin = served.cli("keys", "create", "ops", "--scope", "admin")
    assert admin.returncode == 0, admin.stderr
    token = admin.stdout.split()[0]
    # A new key works at once; a revoked one is refused at once.
    assert served.get("/v1/models", token)[0] == 200
    assert served.get("/v1/models", "sk-appl-wrong")[0] == 401
    other = served.cli("keys", "create", "ops2", "--scope", "admin").stdout.split()[0]
    assert served.get("/v1/models", other)[0] == 200
    assert served.cli("keys", "revoke", "ops").returncode == 0
    assert served.get("/v1/models", token)[0] == 401

    # models.toml edited on disk: the watcher re-reads it (RELOADING=1 ... READY=1).
    write_catalog(tmp_path / "models.toml", {"tiny": tiny_models["a"], "tiny-b": tiny_models["b"]})
    served.notify.until("RELOADING=1")
    served.notify.until("READY=1")
    ids = {m["id"] for m in json.loads(served.get("/v1/models", other)[2])["data"]}
    assert ids == {"tiny", "tiny-b"}

    # SIGHUP forces a re-read too.
    write_catalog(tmp_path / "models.toml", {"tiny": tiny_models["a"]})
    served.proc.send_signal(signal.SIGHUP)
    served.notify.until("RELOADING=1")
    served.notify.until("READY=1")
    ids = {m["id"] for m in json.loads(served.get("/v1/models", other)[2])["data"]}
    assert ids == {"tiny"}
    assert served.stop() == 0


def test_metrics_and_admin_socket(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served.notify.until("READY=1")
    monkeypatch.setenv("APPLIANCE_STORE", str(tmp_path / "store"))
    settings = load_settings()
    assert adminclient.loaded_models(settings) == set()

    from prometheus_client.parser import text_string_to_metric_families

    def counter(text: str, name: str, **labels: str) -> float:
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        return 0.0

    before = served.get("/metrics")[2].decode()
    status, _, _ = served.post("/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 4,
                                                   "logit_bias": {"2": -100}})
    assert status == 200
    after = served.get("/metrics")[2].decode()
    route = "/v1/completions"
    assert counter(after, "appliance_requests_total", route=route, status="200") == \
        counter(before, "appliance_requests_total", route=route, status="200") + 1
    assert counter(after, "appliance_generated_tokens_total", model="tiny") == \
        counter(before, "appliance_generated_tokens_total", model="tiny") + 4

    assert adminclient.loaded_models(settings) == {"tiny"}
    # The store's CLI asks the daemon: `ls` shows it loaded, `rm` refuses.
    ls = served.cli("ls")
    assert ls.returncode == 0 and "tiny" in ls.stdout
    rm = served.cli("rm", "tiny")
    assert rm.returncode == 1 and "loaded" in rm.stderr, rm.stderr
    assert served.stop() == 0
    assert adminclient.loaded_models(settings) is None  # socket gone with the daemon
