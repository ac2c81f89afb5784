"""The `appliance` command run in this process through its main(): the same parsing, output
and exit codes as `python -m appliance`, without starting an interpreter (about a second each
here). Tests that need a real process (kill -9, signals, racing for a lock) spawn one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pytest

from appliance.cli import main


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            env: Mapping[str, str], *args: str) -> Ran:
    """`appliance ARGS` with the variables in `env` set for the call only."""
    capsys.readouterr()
    with monkeypatch.context() as m:
        for k, v in env.items():
            m.setenv(k, v)
        code = main(list(args))
    out = capsys.readouterr()
    return Ran(code, out.out, out.err)
