"""`appliance bench` as a process against two real daemons (tiny random-weight GGUFs on real
llama.cpp): the comparison table, the JSON result with exact token counts (end-of-generation
tokens banned through --model-file), and a closed port failing in one line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import AsyncIterator

from appliance.auth import create_key
from test_api_support import pull_all, serving, write_config

ROOT = Path(__file__).resolve().parents[1]


async def _bench(*args: str) -> tuple[int, str, str]:
    """Run the CLI in a child process, so the daemons keep serving on this event loop."""
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "appliance", "bench", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out, err = await asyncio.wait_for(p.communicate(), timeout=300)
    assert p.returncode is not None
    return p.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def two_daemons(tmp_path: Path, tiny_models: dict[str, Path]) -> AsyncIterator[tuple[str, str, str]]:
    """Ours (model "tiny", behind an API key) and a peer (another model, open on loopback)."""
    ours_dir, peer_dir = tmp_path / "ours", tmp_path / "peer"
    ours_dir.mkdir()
    peer_dir.mkdir()
    ours = write_config(ours_dir, {"tiny": {"source": f"file://{tiny_models['a']}", "context": 128, "parallel": 2}})
    peer = write_config(peer_dir, {"other": {"source": f"file://{tiny_models['b']}", "context": 128, "parallel": 2}})
    token, _ = create_key(ours.keys_path, "bench")
    async with serving(ours, store=pull_all(ours)) as a, serving(peer, store=pull_all(peer)) as b:
        yield a.url, b.url, token


async def test_bench_against_a_peer_table_and_json(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    common = ["--concurrency", "1,2", "--max-tokens", "8", "--model-file", str(tiny_models["a"])]
    async with two_daemons(tmp_path, tiny_models) as (ours, peer, token):
        rc, out, err = await _bench("--url", ours, "--api-key", token, "--peer", peer, *common)
        assert rc == 0, err
        lines = out.splitlines()
        header = next(ln for ln in lines if "ours tok/s" in ln)
        assert "peer tok/s" in header and "ratio" in header and "TTFT p50 ms ours/peer" in header
        rows = lines[lines.index(header) + 1:]
        assert [r.split("|")[0].strip() for r in rows] == ["1", "2"]
        for r in rows:
            cells = [c.strip() for c in r.split("|")]
            ours_tps, peer_tps, ratio = (float(c) for c in cells[1:4])
            assert ours_tps > 0 and peer_tps > 0
            assert abs(ratio - ours_tps / peer_tps) <= 0.01 + 0.01 * ratio  # table rounding only
            assert cells[-1] == "0/0"
        assert "models: ours tiny; peer other" in out
        assert "banned tokens 2" in out  # the spm vocab's </s>, read by llama.cpp from the GGUF

        rc, out, err = await _bench("--url", ours, "--api-key", token, "--peer", peer, "--json",
                                    "--requests-per-level", "3", *common)
    assert rc == 0, err
    result = json.loads(out)
    assert result["settings"]["banned_tokens"] == [2] and result["settings"]["max_tokens"] == 8
    assert result["servers"] == {"ours": {"url": ours, "model": "tiny"}, "peer": {"url": peer, "model": "other"}}
    assert [lv["concurrency"] for lv in result["levels"]] == [1, 2]
    assert [lv["order"] for lv in result["levels"]] == [["ours", "peer"], ["peer", "ours"]]
    for lv in result["levels"]:
        for side in ("ours", "peer"):
            s = lv[side]
            assert s["requests"] == 3 and s["errors"] == 0
            reqs = s["per_request"]
            assert [r["tokens"] for r in reqs] == [8, 8, 8]  # fixed length: EOG banned, usage from the server
            assert all(r["usage_reported"] and r["error"] is None for r in reqs)
            assert all(0 < r["ttft_s"] <= r["latency_s"] for r in reqs)
            assert s["tokens"] == 24 and s["tokens_per_s"] > 0
            assert s["ttft_p50_s"] <= s["ttft_p95_s"]
        assert lv["ratio"] == lv["ours"]["tokens_per_s"] / lv["peer"]["tokens_per_s"]


async def test_bench_chat_endpoint_alone(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    async with two_daemons(tmp_path, tiny_models) as (ours, _, token):
        rc, out, err = await _bench("--url", ours, "--api-key", token, "--endpoint", "chat", "--concurrency", "2",
                                    "--max-tokens", "4", "--ban-tokens", "2", "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert list(result["servers"]) == ["ours"]
    (lv,) = result["levels"]
    assert "peer" not in lv and "ratio" not in lv
    assert [r["tokens"] for r in lv["ours"]["per_request"]] == [4] * 4  # default: 2 x 2 requests


async def test_bench_failures_are_one_line_exit_1(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    rc, out, err = await _bench("--url", "localhost:8000")  # no scheme: a usage error, nothing sent
    assert rc == 2 and out == ""
    assert err.splitlines() == ["appliance: error: --url 'localhost:8000': expected an http:// or https:// URL, "
                                "e.g. http://127.0.0.1:8000"]

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, out, err = await _bench("--url", f"http://127.0.0.1:{port}", "--concurrency", "1", "--max-tokens", "4")
    assert rc == 1
    assert err.splitlines() == [f"appliance: error: http://127.0.0.1:{port}: cannot connect: connection refused"]

    async with two_daemons(tmp_path, tiny_models) as (ours, _, token):
        rc, out, err = await _bench("--url", ours, "--concurrency", "1", "--max-tokens", "4")  # no key
        assert rc == 1
        assert len(err.splitlines()) == 1 and err.startswith(f"appliance: error: {ours}: HTTP 401: ")
        rc, out, err = await _bench("--url", ours, "--api-key", token, "--model", "nope", "--max-tokens", "4")
        assert rc == 1
        assert len(err.splitlines()) == 1 and f"{ours}: HTTP 404: " in err
