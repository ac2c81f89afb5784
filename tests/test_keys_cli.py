"""`appliance keys create|ls|revoke` through the real CLI entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.auth import Keyring, hash_token
from appliance.cli import main


def _cfg(tmp_path: Path) -> Path:
    cfg = tmp_path / "appliance.toml"
    cfg.write_text("[server]\n")
    return cfg


def test_create_prints_token_once_ls_hides_it_revoke_removes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _cfg(tmp_path)
    assert main(["keys", "create", "alice", "--config", str(cfg), "--scope", "admin", "--rpm", "5"]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert token.startswith("sk-appl-") and "shown only now" in err
    keys_file = tmp_path / "keys.toml"  # beside appliance.toml
    assert hash_token(token) in keys_file.read_text() and token not in keys_file.read_text()
    assert Keyring(keys_file).authenticate(token).name == "alice"

    assert main(["keys", "create", "bob", "--config", str(cfg), "--models", "m1,m2"]) == 0
    capsys.readouterr()
    assert main(["keys", "ls", "--config", str(cfg)]) == 0
    out, _ = capsys.readouterr()
    assert "alice" in out and "admin" in out and "bob" in out and "m1,m2" in out
    assert "sk-appl-" not in out and hash_token(token) not in out

    assert main(["keys", "revoke", "alice", "--config", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["keys", "ls", "--config", str(cfg)]) == 0
    out, _ = capsys.readouterr()
    assert "alice" not in out and "bob" in out


def test_errors_are_one_line_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _cfg(tmp_path)
    assert main(["keys", "revoke", "nobody", "--config", str(cfg)]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and "no key named 'nobody'" in err
    with pytest.raises(SystemExit) as e:
        main(["keys", "create", "x", "--scope", "root", "--config", str(cfg)])
    assert e.value.code == 2
    assert main(["keys", "create", "x", "--rpm", "-1", "--config", str(cfg)]) == 2


def test_keys_file_found_from_user_config_dir(isolated_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "solo"]) == 0
    assert (isolated_env / ".config" / "appliance" / "keys.toml").is_file()
