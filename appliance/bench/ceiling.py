"""llama-bench's single-stream decode: the engine's ceiling for one sequence on this machine.

No server can stream one sequence faster than llama.cpp decodes it with nothing around it, so
this figure says how much of the ceiling each server's one-client row reaches.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from ..errors import BenchError
from .servers import Settings


def argv(binary: str, s: Settings, tokens: int) -> list[str]:
    return [binary, "-m", str(s.model), "-p", "0", "-n", str(tokens), "-ngl", str(s.ngl),
            "-fa", "1", "-t", str(s.threads), "-b", str(s.batch), "-ub", str(s.batch),
            "-ctk", s.kv_cache_type, "-ctv", s.kv_cache_type, "-r", "3", "-o", "json"]


def parse(stdout: str) -> dict[str, Any]:
    """llama-bench's JSON: a list of tests; the decode test has n_prompt 0."""
    try:
        rows = json.loads(stdout)
        row = next(r for r in rows if r.get("n_gen", 0) > 0 and r.get("n_prompt", 0) == 0)
        return {"tokens_per_s": float(row["avg_ts"]), "stddev": float(row.get("stddev_ts", 0.0)),
                "n_gen": int(row["n_gen"]), "backend": row.get("backends") or row.get("backend"),
                "gpu": row.get("gpu_info"), "cpu": row.get("cpu_info")}
    except (ValueError, StopIteration, KeyError, TypeError) as e:
        raise BenchError(f"llama-bench printed no decode result: {stdout.strip()[:200]!r}") from e


async def run(binary: str, s: Settings, tokens: int, log: Path) -> dict[str, Any]:
    if not Path(binary).is_file():
        raise BenchError(f"--llama-bench {binary}: no such file")
    with log.open("wb") as err:
        p = await asyncio.create_subprocess_exec(*argv(binary, s, tokens), stdout=asyncio.subprocess.PIPE, stderr=err)
        out, _ = await p.communicate()
    if p.returncode != 0:
        raise BenchError(f"llama-bench exited {p.returncode}; see {log}")
    return parse(out.decode(errors="replace"))
