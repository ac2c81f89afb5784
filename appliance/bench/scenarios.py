"""The figures beyond plain levels, each against one running server.

- schema_mix: one json_schema stream among plain ones vs all plain (same concurrency), so the
  cost of a grammar to everybody else is visible (DESIGN.md: a grammar inside every step would
  slow every stream 4x; the engine checks sampled tokens instead).
- hot_swap: unload the model through the admin API, then time a request's first token, vs the
  same request on the loaded model and llama.cpp's bare load time (bareload).
- overload: many clients against a bounded queue: the excess must get 429 with Retry-After,
  never a 5xx, and the admitted must keep their latency.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp

from ..errors import BenchError
from .load import LevelResult, Target, Workload, run_level, run_request
from .servers import Settings


async def schema_mix(session: aiohttp.ClientSession, target: Target, model: str, w: Workload,
                     concurrency: int = 16, per_client: int = 2, repeat: int = 2,
                     schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """All-plain and mixed levels, alternated `repeat` times. The cost is measured on the plain
    streams: their aggregate tok/s in the mixed run against (n-1)/n of the all-plain aggregate.
    `schema`: the schema stream's (default: load.DEFAULT_SCHEMA). Answers cut at max_tokens are
    counted apart (schema_truncated): only an answer that finished has to parse."""
    plain, mixed = LevelResult(concurrency), LevelResult(concurrency)
    for r in range(repeat):
        runs = [(plain, 0), (mixed, 1)] if r % 2 == 0 else [(mixed, 1), (plain, 0)]
        for into, schema_clients in runs:
            into.add(await run_level(session, target, model, w, concurrency, per_client,
                                     first_index=10_000 * (r + 1), schema_clients=schema_clients,
                                     schema=schema))
    schema_reqs = [x for x in mixed.requests if x.schema]
    plain_in_mixed = [x for x in mixed.requests if not x.schema and not x.error]
    mixed_plain_tps = sum(x.tokens for x in plain_in_mixed) / mixed.wall_s if mixed.wall_s else 0.0
    expected = plain.tokens_per_s * (concurrency - 1) / concurrency
    return {
        "concurrency": concurrency,
        "all_plain": plain.summary(),
        "mixed": mixed.summary(),
        "plain_tokens_per_s_in_mixed": mixed_plain_tps,
        "expected_plain_tokens_per_s": expected,
        "cost": 1 - mixed_plain_tps / expected if expected else None,
        "schema_requests": len(schema_reqs),
        "schema_errors": sum(1 for x in schema_reqs if x.error),
        "schema_valid_json": sum(1 for x in schema_reqs if not x.error and x.valid_json),
        "schema_truncated": sum(1 for x in schema_reqs if not x.error and x.finish_reason == "length"),
        "schema_tokens_per_s": (sum(x.tokens for x in schema_reqs if not x.error) / mixed.wall_s) if mixed.wall_s else 0.0,
    }


async def hot_swap(session: aiohttp.ClientSession, target: Target, model: str, w: Workload,
                   trials: int = 3) -> dict[str, Any]:
    """Per trial: unload (admin API), a request that must load the model, then the same
    request on the loaded model. TTFTs of both."""
    swap: list[float] = []
    loaded: list[float] = []
    for i in range(trials):
        async with session.post(f"{target.base}/admin/models/{model}/unload", headers=target.headers()) as resp:
            if resp.status != 200:
                raise BenchError(f"{target.base}: unload answered HTTP {resp.status}: {(await resp.text())[:200]}")
        for into in (swap, loaded):
            r = await run_request(session, target, model, w, 20_000 + i)
            if r.error or r.ttft_s is None:
                raise BenchError(f"{target.base}: hot-swap request failed: {r.error}")
            into.append(r.ttft_s)
    return {"trials": trials, "swap_ttft_s": swap, "loaded_ttft_s": loaded}


async def bare_load(s: Settings, repeat: int = 3) -> dict[str, Any]:
    """llama.cpp's own load + context + first decode, in a child process."""
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "appliance.bench.bareload", "--model", str(s.model), "--context", str(s.context),
        "--parallel", str(s.parallel), "--gpu-layers", str(s.ngl), "--threads", str(s.threads),
        "--batch", str(s.batch), "--repeat", str(repeat),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await p.communicate()
    if p.returncode != 0:
        raise BenchError(f"bare llama.cpp load failed: {err.decode(errors='replace').strip()[-300:]}")
    return dict(json.loads(out))


def swap_verdict(swap: dict[str, Any], bare: dict[str, Any]) -> dict[str, Any]:
    """The goal's terms: swap TTFT against bare load + the loaded request's own TTFT."""
    from statistics import median

    swap_ttft, loaded = median(swap["swap_ttft_s"]), median(swap["loaded_ttft_s"])
    reference = bare["total_s_median"] + loaded
    return {"swap_ttft_s_median": swap_ttft, "loaded_ttft_s_median": loaded,
            "bare_load_s_median": bare["total_s_median"], "reference_s": reference,
            "ratio": swap_ttft / reference if reference else None}


async def overload(session: aiohttp.ClientSession, target: Target, model: str, w: Workload,
                   clients: int = 64, per_client: int = 2, retry_cap_s: float = 2.0) -> dict[str, Any]:
    """`clients` closed-loop clients; a refused one waits its Retry-After (capped) and goes on."""
    res = await run_level(session, target, model, w, clients, per_client, first_index=30_000,
                          honour_retry_after=retry_cap_s)
    n = len(res.requests)
    admitted = res.ok
    other = [r.error for r in res.requests if r.error and r.status != 429]
    return {
        "clients": clients, "attempts": n, "admitted": len(admitted), "rejected_429": res.rejected,
        "rejected_share": res.rejected / n if n else 0.0, "server_errors_5xx": res.server_errors,
        "other_errors": len(other), "first_other_error": other[0] if other else None,
        "retry_after_s": sorted({r.retry_after_s for r in res.requests if r.retry_after_s is not None}),
        "admitted_ttft_p50_s": res.ttft_p50_s, "admitted_ttft_p95_s": res.ttft_p95_s,
        "admitted_latency_p50_s": res.latency_p50_s, "admitted_latency_p95_s": res.latency_p95_s,
        "tokens_per_s": res.tokens_per_s,
    }
