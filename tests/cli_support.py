"""The `appliance` command run in this process through its main(): the same parsing, output
and exit codes as `python -m appliance`, without starting an interpreter (about a second each
here). Tests that need a real process (kill -9, signals, racing for a lock, piped stdin)
spawn one."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Mapping

import pytest

from appliance.cli import main


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> Ran:
    """`appliance ARGS`, its output captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as e:  # argparse usage errors
            rc = int(e.code or 0)
    return Ran(rc, out.getvalue(), err.getvalue())


def run_cli_env(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str], *args: str) -> Ran:
    """`appliance ARGS` with the variables in `env` set for the call only."""
    with monkeypatch.context() as m:
        for k, v in env.items():
            m.setenv(k, v)
        return run_cli(*args)
