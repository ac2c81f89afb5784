"""Hot swap under load against the real daemon (issue 14): 4 clients alternating between
models whose budget holds fewer than are asked for. Zero 5xx, every stream complete, and
never more resident than the budget holds.

Bounded by a request count (4 clients x ROUNDS requests per scenario), not by wall time, to
keep CI quick on a 2-core machine; `queue.swap_after` is short so that swaps happen often.
The daemon logs every load and every finished unload and, on a broken budget invariant, an
error line ("memory budget exceeded"): the residency count is replayed from that log.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from appliance.config import ModelConfig
from appliance.scheduler import GGUFEstimator

ROOT = Path(__file__).resolve().parent.parent
SAFETY_S = 120  # never reached when things work
CLIENTS, ROUNDS = 4, 12


def need(path: Path) -> int:
    cfg = ModelConfig(source=f"file://{path}", context=512, parallel=2)
    return GGUFEstimator().estimate([path], cfg, gpu_layers=0, device="cpu").total


class Daemon:
    def __init__(self, tmp: Path, models: dict[str, Path], pinned: set[str], budget: int) -> None:
        (tmp / "models.toml").write_text("".join(
            f'[{mid}]\nsource = "file://{p}"\ncontext = 512\nparallel = 2\n'
            f'keep_alive = "forever"\npinned = {"true" if mid in pinned else "false"}\n\n'
            for mid, p in models.items()
        ))
        (tmp / "appliance.toml").write_text(
            f'[memory]\nbudget = {budget}\n[queue]\nswap_after = "50ms"\nmax_wait = "100s"\n'
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "NOTIFY_", "WATCHDOG_"))}
        self.env.update(PYTHONPATH=str(ROOT), APPLIANCE_STORE=str(tmp / "store"))
        for mid in models:
            r = subprocess.run([sys.executable, "-m", "appliance", "pull", mid], env=self.env, cwd=tmp,
                               capture_output=True, text=True, timeout=SAFETY_S)
            assert r.returncode == 0, r.stderr
        self.log = tmp / "serve.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "serve", "--port", "0"], env=self.env, cwd=tmp,
            stdout=subprocess.PIPE, stderr=open(self.log, "w"), text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        assert "serving on" in line, self.log.read_text()
        self.url = line.split("serving on ")[1].strip()

    def request(self, model: str, stream: bool) -> tuple[int, bytes]:
        body = {"model": model, "prompt": "hello", "max_tokens": 6, "temperature": 0, "stream": stream}
        req = urllib.request.Request(self.url + "/v1/completions", data=json.dumps(body).encode(), method="POST")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=SAFETY_S) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(SAFETY_S)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


def churn(d: Daemon, models: list[str]) -> list[tuple[str, bool, int, bytes]]:
    """CLIENTS threads, each alternating over `models` (offset by its index), half streamed."""
    results: list[tuple[str, bool, int, bytes]] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        for n in range(ROUNDS):
            mid, stream = models[(i + n) % len(models)], (i + n) % 2 == 0
            status, body = d.request(mid, stream)
            with lock:
                results.append((mid, stream, status, body))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SAFETY_S * 4)
    return results


def most_resident(log: str) -> int:
    """Replay the daemon's log: a model is resident from "loading X" to "unloaded X"."""
    resident: set[str] = set()
    most = 0
    for line in log.splitlines():
        if m := re.search(r"\bloading (\S+) on ", line):
            resident.add(m.group(1))
            most = max(most, len(resident))
        elif m := re.search(r"\bunloaded (\S+)", line):
            resident.discard(m.group(1))
    return most


def check(d: Daemon, results: list[tuple[str, bool, int, bytes]], holds: int) -> None:
    assert len(results) == CLIENTS * ROUNDS
    bad = [(mid, status, body[:200]) for mid, _, status, body in results if status != 200]
    assert not bad, bad
    for mid, stream, _, body in results:
        if stream:  # complete: a finish reason, then [DONE]
            assert b'"finish_reason":"length"' in body and body.rstrip().endswith(b"data: [DONE]"), body[-300:]
        else:
            assert json.loads(body)["choices"][0]["finish_reason"] == "length"
    d.stop()
    log = d.log.read_text()
    assert "memory budget exceeded" not in log
    assert 1 < log.count("loading ")  # it did swap
    assert most_resident(log) <= holds, log


def test_two_models_budget_for_one(tmp_path: Path, tiny_models: dict[str, Path], daemons: list[Daemon]) -> None:
    models = {"chat": tiny_models["a"], "code": tiny_models["b"]}
    budget = need(tiny_models["a"]) * 3 // 2  # one fits (estimates are within 15%), two do not
    d = Daemon(tmp_path, models, set(), budget)
    daemons.append(d)
    check(d, churn(d, ["chat", "code"]), holds=1)


def test_pinned_plus_two_budget_for_two(tmp_path: Path, tiny_models: dict[str, Path], daemons: list[Daemon]) -> None:
    models = {"base": tiny_models["a"], "m2": tiny_models["b"], "m3": tiny_models["c"]}
    budget = need(tiny_models["a"]) * 5 // 2
    d = Daemon(tmp_path, models, {"base"}, budget)
    daemons.append(d)
    check(d, churn(d, ["base", "m2", "m3"]), holds=2)
