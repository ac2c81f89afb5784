"""The systemd unit passes `systemd-analyze verify` and says what SPEC.md promises;
the launchd plist parses and restarts only after failures."""

from __future__ import annotations

import plistlib
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "appliance.service"
PLIST = ROOT / "systemd" / "com.appliance.daemon.plist"
SYSUSERS = ROOT / "systemd" / "appliance.sysusers"


def _unit_entries(text: str | None = None) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> every value, in order, read the way systemd reads a unit: keys repeat,
    whitespace around '=' is dropped, a trailing backslash continues the line (joined with a
    space), '#' and ';' start comments. Anything else is a syntax error (ValueError)."""
    entries: dict[tuple[str, str], list[str]] = {}
    section = ""
    pending = ""
    for n, raw in enumerate((UNIT.read_text() if text is None else text).splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, eq, value = line.partition("=")
        if not eq or not key.strip() or not section:
            raise ValueError(f"line {n}: not a key=value in a section: {raw!r}")
        entries.setdefault((section, key.strip()), []).append(value.strip())
    return entries


def test_unit_parser_reads_what_systemd_reads() -> None:
    text = ("[Service]\nType = notify\n# Type=simple\n; Type=forking\nEnvironment=A=1\nEnvironment=B=x y\n"
            "ExecStart=/bin/a \\\n    --flag\n\n[Install]\nWantedBy=multi-user.target\n")
    e = _unit_entries(text)
    assert e == {("Service", "Type"): ["notify"], ("Service", "Environment"): ["A=1", "B=x y"],
                 ("Service", "ExecStart"): ["/bin/a --flag"], ("Install", "WantedBy"): ["multi-user.target"]}
    for bad in ("Type=notify\n", "[Service]\nnot a setting\n"):
        with pytest.raises(ValueError):
            _unit_entries(bad)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_verifies(tmp_path: Path) -> None:
    # verify checks ExecStart's binary exists; point it at one that does, change nothing else.
    text = UNIT.read_text()
    assert "ExecStart=/opt/appliance/venv/bin/appliance serve" in text
    copy = tmp_path / "appliance.service"
    copy.write_text(text.replace("ExecStart=/opt/appliance/venv/bin/appliance serve", "ExecStart=/bin/true"))
    r = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    # verify exits 0 on unknown keys too and only warns: any line about our file is a failure.
    ours = [ln for ln in (r.stdout + r.stderr).splitlines() if "appliance.service" in ln]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_verify_catches_a_bad_key(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key is reported."""
    copy = tmp_path / "appliance.service"
    copy.write_text(
        UNIT.read_text().replace("ExecStart=/opt/appliance/venv/bin/appliance serve", "ExecStart=/bin/true")
        .replace("WatchdogSec=", "WatchdogSecs=")
    )
    r = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    assert "WatchdogSecs" in r.stdout + r.stderr


def test_unit_contract() -> None:
    e = _unit_entries()
    svc = lambda k: e.get(("Service", k), [])  # noqa: E731
    assert svc("Type") == ["notify"] and svc("NotifyAccess") == ["main"]
    assert svc("RestartPreventExitStatus") == ["2"] and svc("Restart") == ["on-failure"]
    assert svc("User") == ["appliance"]
    for d in ("StateDirectory", "CacheDirectory", "ConfigurationDirectory", "RuntimeDirectory"):
        assert svc(d) == ["appliance"], d
    env = dict(v.split("=", 1) for v in svc("Environment"))
    assert env["APPLIANCE_STORE"] == "%S/appliance"
    assert env["HF_HOME"].startswith("%C/appliance") and env["CUDA_CACHE_PATH"].startswith("%C/appliance")
    # Stop timeout above the default drain_timeout (30s); watchdog set.
    from appliance.config import ServerConfig
    from appliance.units import parse_duration

    assert parse_duration(svc("TimeoutStopSec")[0]) > ServerConfig().drain_timeout
    assert parse_duration(svc("WatchdogSec")[0]) > 0
    assert svc("DevicePolicy") == ["closed"]
    assert "char-nvidia* rw" in svc("DeviceAllow")
    assert not any(v.startswith("/dev") for v in svc("DeviceAllow"))
    assert "+-/usr/bin/nvidia-modprobe -u -c0" in svc("ExecStartPre")
    assert svc("RestrictAddressFamilies") == ["AF_UNIX AF_INET AF_INET6"]
    for k in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert svc(k), k
    assert not svc("MemoryDenyWriteExecute")  # CUDA's JIT needs W+X pages


def test_sysusers_snippet() -> None:
    lines = [ln.split() for ln in SYSUSERS.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0][:2] == ["u", "appliance"]


def test_launchd_plist() -> None:
    p = plistlib.loads(PLIST.read_bytes())
    assert p["Label"] == "com.appliance.daemon"
    assert p["ProgramArguments"] == ["/opt/appliance/venv/bin/appliance", "serve"]
    assert p["UserName"] and p["RunAtLoad"] is True
    assert p["KeepAlive"] == {"SuccessfulExit": False}
    from appliance.config import ServerConfig

    assert p["ExitTimeOut"] > ServerConfig().drain_timeout
    assert "APPLIANCE_STORE" in p["EnvironmentVariables"]
    assert p["StandardOutPath"] and p["StandardErrorPath"]


def test_unit_has_no_stray_syntax_and_the_usual_sections() -> None:
    assert {section for section, _ in _unit_entries()} == {"Unit", "Service", "Install"}
