"""scripts/install.sh into a scratch root: the expected tree, one admin key, and a second
run that changes nothing (same files, same checksums); --uninstall keeps config and models."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from appliance.config import ApplianceConfig, load_settings

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install.sh"
EXAMPLE = ROOT / "docs" / "examples" / "appliance.toml"


def run_install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), APPLIANCE_CLI=f"{sys.executable} -m appliance")
    return subprocess.run(["bash", str(SCRIPT), "--root", str(root), "--skip-pip", *args],
                          env=env, capture_output=True, text=True, timeout=120)


def tree(root: Path) -> dict[str, str]:
    """path -> sha256 (files), 'link:target' (symlinks), 'dir' (directories)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() + f" {p.stat().st_mode & 0o777:o}"
    return out


def test_install_into_a_scratch_root_is_idempotent(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = run_install(root)
    assert first.returncode == 0, first.stderr
    etc = root / "etc" / "appliance"
    expected = [
        "etc/systemd/system/appliance.service",
        "usr/lib/sysusers.d/appliance.conf",
        "etc/appliance/appliance.toml",
        "etc/appliance/models.toml",
        "etc/appliance/keys.toml",
        "opt/appliance/venv/bin/python",
        "opt/appliance/docs/operations.md",
    ]
    for rel in expected:
        assert (root / rel).exists(), rel
    assert os.readlink(root / "usr/local/bin/appliance") == "/opt/appliance/venv/bin/appliance"
    assert (root / "etc/systemd/system/appliance.service").read_bytes() == (ROOT / "systemd/appliance.service").read_bytes()
    assert (etc / "models.toml").read_bytes() == (ROOT / "models.toml").read_bytes()
    assert (etc / "keys.toml").stat().st_mode & 0o777 == 0o640

    # The printed token is the admin key recorded (hashed) in keys.toml.
    token = next(ln.strip() for ln in first.stdout.splitlines() if ln.strip().startswith("sk-"))
    keys = tomllib.loads((etc / "keys.toml").read_text())["keys"]
    assert list(keys) == ["admin"] and keys["admin"]["scopes"] == ["admin"]
    assert keys["admin"]["sha256"] == hashlib.sha256(token.encode()).hexdigest()
    # The first admin key may use every model: no allowed-model list (an empty one means all).
    assert keys["admin"].get("models", []) == []

    # The installed config is valid and points the CLI at the service's store.
    settings = load_settings(etc / "appliance.toml", etc / "models.toml", env={})
    assert settings.config.store.path == Path("/var/lib/appliance")
    assert settings.keys_path == etc / "keys.toml"

    before = tree(root)
    second = run_install(root)
    assert second.returncode == 0, second.stderr
    assert tree(root) == before
    assert "sk-" not in second.stdout  # no second admin key
    assert "installed" not in second.stdout


def test_edited_config_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert run_install(root).returncode == 0
    cfg = root / "etc/appliance/appliance.toml"
    cfg.write_text(cfg.read_text().replace('# port = 8000', 'port = 9000'))
    assert run_install(root).returncode == 0
    assert "port = 9000" in cfg.read_text()


def test_uninstall_keeps_config_and_models_unless_purged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert run_install(root).returncode == 0
    model = root / "var/lib/appliance/blobs/sha256-x"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"gguf")
    r = run_install(root, "--uninstall")
    assert r.returncode == 0, r.stderr
    assert not (root / "opt/appliance").exists()
    assert not (root / "etc/systemd/system/appliance.service").exists()
    assert (root / "etc/appliance/keys.toml").exists() and model.exists()
    r = run_install(root, "--uninstall", "--purge")
    assert r.returncode == 0, r.stderr
    assert not (root / "etc/appliance").exists() and not model.exists()


def test_bad_option_is_a_usage_error(tmp_path: Path) -> None:
    r = run_install(tmp_path, "--frobnicate")
    assert r.returncode == 2 and "unknown option --frobnicate" in r.stderr
    r = run_install(tmp_path, "--purge")
    assert r.returncode == 2


def test_example_config_lists_every_key_with_its_default() -> None:
    text = EXAMPLE.read_text()
    cfg = ApplianceConfig()
    for section, model in ApplianceConfig.model_fields.items():
        assert f"[{section}]" in text, section
        for key in type(getattr(cfg, section)).model_fields:
            assert f"# {key} = " in text, f"{section}.{key}"
    # Uncommenting every key gives a valid file with the defaults.
    uncommented = "\n".join(
        ln[2:].split("   #")[0] if ln.startswith("# ") and " = " in ln and not ln.startswith("# path") and "tls_" not in ln and "keys_file" not in ln
        else ("" if ln.startswith("#") else ln)
        for ln in text.splitlines()
    )
    parsed = ApplianceConfig.model_validate(tomllib.loads(uncommented))
    assert parsed.server == cfg.server and parsed.queue == cfg.queue and parsed.memory == cfg.memory


@pytest.mark.skipif(sys.platform != "linux", reason="the Linux layout")
def test_help() -> None:
    r = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--wheelhouse" in r.stdout and "--root" in r.stdout


def test_scratch_mode_without_a_cli_lays_out_the_files_and_exits_0(tmp_path: Path) -> None:
    """The documented `--root DIR --skip-pip`, as a user runs it (no APPLIANCE_CLI): nothing
    is installed into the venv, so no key can be made; that is said, not a failure."""
    env = {k: v for k, v in os.environ.items() if k != "APPLIANCE_CLI"}
    root = tmp_path / "root"
    p = subprocess.run(["bash", str(SCRIPT), "--root", str(root), "--skip-pip"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "skipped the first admin key" in p.stdout + p.stderr
    assert (root / "etc" / "appliance" / "appliance.toml").is_file()
