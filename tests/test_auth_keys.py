"""The keys file and the keyring: hashing, atomic writes, live re-reads, rate limits."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from appliance.auth import Keyring, RateLimiter, create_key, hash_token, load_keys, revoke_key
from appliance.clock import FakeClock
from appliance.errors import ApplianceError, ConfigError, InvalidAPIKey, RateLimitExceeded, UsageError


def test_create_stores_only_the_hash_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    token, key = create_key(path, "alice", scope="inference", models=["m1"], rpm=10)
    assert token.startswith("sk-appl-") and len(token) > 40
    text = path.read_text()
    assert token not in text and hash_token(token) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = load_keys(path)
    assert keys["alice"].scopes == ("inference",) and keys["alice"].models == ("m1",) and keys["alice"].rpm == 10
    assert not list(tmp_path.glob(".keys.toml.*")), "no temp file left behind"


def test_tokens_are_unique_and_names_unique(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    t1, _ = create_key(path, "a")
    t2, _ = create_key(path, "b")
    assert t1 != t2
    with pytest.raises(UsageError, match="exists"):
        create_key(path, "a")
    with pytest.raises(UsageError, match="invalid key name"):
        create_key(path, "bad name")


def test_keyring_authenticates_and_sees_revocation_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    ring = Keyring(path)
    assert ring.empty
    token, _ = create_key(path, "alice")
    assert ring.authenticate(token).name == "alice"  # picked up on the next call
    with pytest.raises(InvalidAPIKey):
        ring.authenticate(token + "x")
    with pytest.raises(InvalidAPIKey, match="missing"):
        ring.authenticate(None)
    revoke_key(path, "alice")
    with pytest.raises(InvalidAPIKey):
        ring.authenticate(token)
    with pytest.raises(UsageError):
        revoke_key(path, "alice")


def test_broken_keys_file_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    token, _ = create_key(path, "alice")
    ring = Keyring(path)
    assert ring.authenticate(token).name == "alice"
    path.write_text("this is = not [toml")
    with pytest.raises(ApplianceError, match="keys file is invalid"):
        ring.authenticate(token)
    assert not ring.empty  # a broken file is not "no keys": the open mode must not kick in
    with pytest.raises(ConfigError):
        ring.check()


def test_malformed_entries_are_named(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text('[keys.bob]\nsha256 = "abc"\n')
    with pytest.raises(ConfigError, match="keys.bob.sha256"):
        load_keys(path)
    path.write_text(f'[keys.bob]\nsha256 = "{"a" * 64}"\nscopes = ["root"]\n')
    with pytest.raises(ConfigError, match="keys.bob.scopes"):
        load_keys(path)


def test_admin_scope_covers_inference_and_model_lists(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    _, admin = create_key(path, "root", scope="admin")
    _, inf = create_key(path, "app", models=["m1"])
    assert admin.has_scope("inference") and admin.has_scope("admin")
    assert inf.has_scope("inference") and not inf.has_scope("admin")
    assert inf.may_use("m1") and not inf.may_use("m2") and admin.may_use("anything")


def test_rate_limit_token_bucket_on_injected_clock() -> None:
    clock = FakeClock()
    rl = RateLimiter(clock)
    for _ in range(3):
        rl.take("k", 3)
    with pytest.raises(RateLimitExceeded) as e:
        rl.take("k", 3)
    assert e.value.retry_after == pytest.approx(20.0)  # one request per 20 s at 3 rpm
    clock.advance(19.9)
    with pytest.raises(RateLimitExceeded):
        rl.take("k", 3)
    clock.advance(0.1)
    rl.take("k", 3)
    rl.take("other", 3)  # buckets are per key
    for _ in range(100):
        rl.take("free", 0)  # 0 = unlimited


def test_keys_file_written_atomically_keeps_comments(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    create_key(path, "a")
    text = path.read_text()
    assert text.startswith("# API keys")
    path.write_text("# my note\n" + text)
    create_key(path, "b")
    assert "# my note" in path.read_text()
    os.chmod(path, 0o644)
    revoke_key(path, "a")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640, "world bits dropped, the rest kept"


def test_rewrite_keeps_mode_and_group_of_the_existing_file(tmp_path: Path) -> None:
    """install.sh makes keys.toml 0640 root:appliance; a root `keys create` must keep that."""
    path = tmp_path / "keys.toml"
    create_key(path, "a")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # a new file is owner-only
    # As root, use a group the writer is not in by default; otherwise our own group.
    gid = 4242 if os.geteuid() == 0 else os.getgid()
    os.chown(path, -1, gid)
    os.chmod(path, 0o640)
    token, _ = create_key(path, "b")
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_gid == gid
    revoke_key(path, "a")
    st = path.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, gid)
    assert set(load_keys(path)) == {"b"}


ROUNDS = 60


def _create_many(path: str, prefix: str, start: Any, revoke_odd: bool) -> None:
    """What `appliance keys create` (and `revoke`) do, ROUNDS times, racing the other process."""
    start.wait()
    for i in range(ROUNDS):
        create_key(Path(path), f"{prefix}-{i}")
        if revoke_odd and i % 2:
            revoke_key(Path(path), f"{prefix}-{i}")


def test_concurrent_creates_and_revokes_lose_no_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    create_key(path, "first")
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_create_many, args=(str(path), prefix, start, prefix == "b")) for prefix in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    want = {"first"} | {f"a-{i}" for i in range(ROUNDS)} | {f"b-{i}" for i in range(0, ROUNDS, 2)}
    names = set(load_keys(path))
    assert names == want, f"lost: {sorted(want - names)}, kept revoked: {sorted(names - want)}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".keys.toml.*")), "no temp file left behind"
