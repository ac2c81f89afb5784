"""`appliance bench` as a process against running servers (--url/--peer): two real daemons
on tiny random-weight GGUFs. The table (one row per server per level), the JSON with exact
token counts (end-of-generation tokens banned through --model-file), the order in which the
servers take turns, and failures in one line."""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from appliance.auth import create_key
from bench_support import bench
from test_api_support import pull_all, serving, write_config


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


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.split("|")]


def _check_level_figures(s: dict[str, Any], concurrency: int, runs: int, per_client: int, max_tokens: int) -> None:
    """One server at one level: every request streamed exactly max_tokens (EOG banned) and the
    summary figures are those of the per-request list."""
    reqs = s["per_request"]
    n = concurrency * per_client * runs
    assert s["concurrency"] == concurrency and s["runs"] == runs
    assert s["requests"] == len(reqs) == n
    assert s["errors"] == s["rejected_429"] == s["server_errors_5xx"] == 0
    assert [r["tokens"] for r in reqs] == [max_tokens] * n
    assert all(r["status"] == 200 and r["error"] is None and r["finish_reason"] == "length" for r in reqs)
    assert all(not r["schema"] for r in reqs)
    assert all(0 < r["ttft_s"] <= r["latency_s"] for r in reqs)
    assert s["tokens"] == n * max_tokens
    assert s["wall_s"] > 0
    assert s["tokens_per_s"] == s["tokens"] / s["wall_s"]
    assert s["requests_per_s"] == n / s["wall_s"]
    ttfts, latencies = [r["ttft_s"] for r in reqs], [r["latency_s"] for r in reqs]
    assert s["ttft_p50_s"] == pytest.approx(statistics.median(ttfts), rel=1e-9)
    assert s["latency_p50_s"] == pytest.approx(statistics.median(latencies), rel=1e-9)
    assert min(ttfts) <= s["ttft_p50_s"] <= s["ttft_p95_s"] <= max(ttfts)
    assert s["itl_p50_s"] is not None and 0 <= s["itl_p50_s"] <= s["itl_p95_s"]
    assert s["ttft_p95_s"] <= max(latencies)
    assert s["decode_tokens_per_s_mean"] > 0


async def test_bench_against_a_peer_table_and_json(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    out_file = tmp_path / "result.json"
    async with two_daemons(tmp_path, tiny_models) as (ours, peer, token):
        rc, out, err = await bench("--url", ours, "--api-key", token, "--peer", peer, "--concurrency", "1,2",
                                   "--max-tokens", "8", "--requests-per-client", "2", "--repeat", "3",
                                   "--model-file", str(tiny_models["a"]), "--json-out", str(out_file),
                                   "--temperature", "0.5", "--prompt-seed", "11")
    assert rc == 0 and err == "", err
    result = json.loads(out_file.read_text())

    assert result["settings"] == {"endpoint": "completions", "max_tokens": 8, "prompt": None, "prompt_tokens": None,
                                  "banned_tokens": [2],  # the spm vocab's </s>, read by llama.cpp from the GGUF
                                  "temperature": 0.5, "long_every": 0, "long_tokens": 0, "prompt_seed": 11}
    assert result["servers"] == {"ours": {"url": ours, "model": "tiny"}, "peer": {"url": peer, "model": "other"}}
    assert "settings_pinned" not in result and result["machine"]["cpus"] >= 1
    assert [lv["concurrency"] for lv in result["levels"]] == [1, 2]
    # The servers take turns and the first one rotates with every run, across levels too.
    assert [lv["order"] for lv in result["levels"]] == [
        [["ours", "peer"], ["peer", "ours"], ["ours", "peer"]],
        [["peer", "ours"], ["ours", "peer"], ["peer", "ours"]],
    ]
    for lv in result["levels"]:
        for side in ("ours", "peer"):
            _check_level_figures(lv[side], lv["concurrency"], runs=3, per_client=2, max_tokens=8)
            assert all(r["usage_reported"] for r in lv[side]["per_request"])  # both are appliances
        assert lv["ratios"] == {"peer": lv["ours"]["tokens_per_s"] / lv["peer"]["tokens_per_s"]}

    lines = out.splitlines()
    assert lines[0] == ("/v1/completions, stream, temperature 0.5, max_tokens 8, prompt short (seed 11), banned tokens 2, "
                        "levels 1,2, 2 requests per client, 3 run(s) per level")
    assert lines[1] == "models: ours tiny; peer other"
    assert _cells(lines[2]) == ["conc", "server", "tok/s", "vs first", "req/s", "TTFT p50 ms", "TTFT p95 ms",
                                "ITL p50 ms", "ITL p95 ms", "errors"]
    rows = [_cells(r) for r in lines[3:]]
    expected = []
    for lv in result["levels"]:
        for side in ("ours", "peer"):
            s = lv[side]
            expected.append([
                str(lv["concurrency"]), side, f"{s['tokens_per_s']:.1f}",
                "-" if side == "ours" else f"{lv['ratios']['peer']:.2f}", f"{s['requests_per_s']:.2f}",
                f"{s['ttft_p50_s'] * 1000:.0f}", f"{s['ttft_p95_s'] * 1000:.0f}",
                f"{s['itl_p50_s'] * 1000:.1f}", f"{s['itl_p95_s'] * 1000:.1f}", "0",
            ])
    assert rows == expected  # the table is the JSON, rounded


async def test_bench_chat_endpoint_alone(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    out_file = tmp_path / "result.json"
    async with two_daemons(tmp_path, tiny_models) as (ours, _, token):
        rc, out, err = await bench("--url", ours, "--api-key", token, "--endpoint", "chat", "--concurrency", "2",
                                   "--max-tokens", "4", "--ban-tokens", "2", "--json", "--json-out", str(out_file))
    assert rc == 0 and err == "", err
    printed, full = json.loads(out), json.loads(out_file.read_text())
    assert printed["settings"]["endpoint"] == "chat" and printed["settings"]["banned_tokens"] == [2]
    assert list(printed["servers"]) == ["ours"]
    (lv,) = full["levels"]
    assert lv["ratios"] == {} and lv["order"] == [["ours"]]
    _check_level_figures(lv["ours"], 2, runs=1, per_client=2, max_tokens=4)  # default: 2 requests per client
    # --json prints the same result without the per-request lists (--json-out has them).
    for lv_full in full["levels"]:
        lv_full["ours"].pop("per_request")
    assert printed == full


async def test_bench_failures_are_one_line_exit_1(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    # Usage errors: found before anything is printed or sent.
    rc, out, err = await bench("--url", "localhost:8000")  # no scheme
    assert (rc, out) == (2, "")
    assert err.splitlines() == ["appliance: error: --url 'localhost:8000': expected an http:// or https:// URL, "
                                "e.g. http://127.0.0.1:8000"]
    rc, out, err = await bench("--url", "http://127.0.0.1:1", "--peer", "127.0.0.1:2")
    assert (rc, out) == (2, "")
    assert err.splitlines() == ["appliance: error: --peer '127.0.0.1:2': expected an http:// or https:// URL, "
                                "e.g. http://127.0.0.1:8000"]

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, out, err = await bench("--url", f"http://127.0.0.1:{port}", "--concurrency", "1", "--max-tokens", "4")
    assert rc == 1
    assert err.splitlines() == [f"appliance: error: http://127.0.0.1:{port}: cannot connect: connection refused"]

    async with two_daemons(tmp_path, tiny_models) as (ours, _, token):
        rc, out, err = await bench("--url", ours, "--concurrency", "1", "--max-tokens", "4")  # no key
        assert rc == 1
        assert len(err.splitlines()) == 1 and err.startswith(f"appliance: error: {ours}: HTTP 401: ")
        rc, out, err = await bench("--url", ours, "--api-key", token, "--model", "nope", "--max-tokens", "4")
        assert rc == 1
        assert len(err.splitlines()) == 1 and f"{ours}: HTTP 404: " in err
