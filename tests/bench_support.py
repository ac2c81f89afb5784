"""Helpers for the `appliance bench` tests (no tests here): the CLI as a child process, and
checks that the servers it started are gone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # the package, importable without installing


def bench_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra}


async def start_bench(*args: str, **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "appliance", "bench", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=bench_env(**env),
    )


async def bench(*args: str, **env: str) -> tuple[int, str, str]:
    """Run the CLI in a child process (in-process daemons keep serving on this event loop)."""
    p = await start_bench(*args, **env)
    try:
        out, err = await asyncio.wait_for(p.communicate(), timeout=300)
    finally:
        if p.returncode is None:
            p.kill()
            await p.wait()
    assert p.returncode is not None
    return p.returncode, out.decode(), err.decode()


def processes_with(*needles: str) -> list[tuple[int, list[str]]]:
    """Running processes whose argv contains every needle as a whole argument or a part of one."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
            if argv and all(any(n in a for a in argv) for n in needles):
                found.append((int(entry.name), argv))
    return found


def port_closed(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex((host, int(port))) != 0


def no_servers_left(result: dict[str, Any], workdir: Path) -> None:
    """Every server of a --compare run is gone: no process mentions the work directory (the
    appliance's config lives there) or a recorded port (llama-cpp-python's server), and no
    recorded port accepts connections."""
    assert processes_with(str(workdir)) == []
    for name, server in result["servers"].items():
        port = server["url"].rsplit(":", 1)[1]
        assert [pid for pid, argv in processes_with("appliance.bench.lcpserver") if port in argv] == [], name
        assert port_closed(server["url"]), name
