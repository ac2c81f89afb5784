"""`appliance bench --compare` as a process: it starts the appliance (and llama-cpp-python's
server) on a tiny GGUF with pinned settings, measures both, runs the scenarios against the
appliance, writes the JSON and the PNG, and leaves no server running, whether it finishes,
fails or is sent SIGTERM. Usage errors are one line on stderr, nothing on stdout, exit 2."""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import tomllib
from pathlib import Path

import pytest

from bench_support import bench, no_servers_left, processes_with, start_bench

# Settings every started server gets: the smallest that still run two streams.
PINNED = ["--context", "128", "--parallel", "2", "--threads", "1"]


async def test_compare_with_llama_cpp_python(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("fastapi")  # llama-cpp-python's `server` extra (appliance[bench])
    workdir, out_file, png = tmp_path / "wd", tmp_path / "result.json", tmp_path / "plots" / "bench.png"
    rc, out, err = await bench("--compare", "llama-cpp-python", "--model-file", str(tiny_models["a"]), *PINNED,
                               "--concurrency", "1,2", "--max-tokens", "4", "--workdir", str(workdir),
                               "--json-out", str(out_file), "--plot", str(png))
    assert rc == 0 and err == "", err
    result = json.loads(out_file.read_text())
    no_servers_left(result, workdir)

    servers = result["servers"]
    assert list(servers) == ["appliance", "llama-cpp-python"]
    assert all(s["model"] == "bench" and s["url"].startswith("http://127.0.0.1:") for s in servers.values())
    assert servers["appliance"]["url"] != servers["llama-cpp-python"]["url"]
    assert result["settings_pinned"] == {
        "model": str(tiny_models["a"].resolve()), "context": 128, "parallel": 2, "gpu_layers": "all",
        "threads": 1, "batch": 512, "ubatch": 512, "kv_cache_type": "f16", "kv_unified": False,
        "flash_attn": "auto", "max_waiting": 16,
    }
    assert result["settings"]["banned_tokens"] == [2] and result["settings"]["max_tokens"] == 4
    assert [lv["concurrency"] for lv in result["levels"]] == [1, 2]
    assert [lv["order"] for lv in result["levels"]] == [[["appliance", "llama-cpp-python"]],
                                                         [["llama-cpp-python", "appliance"]]]
    for lv in result["levels"]:
        for name in servers:
            s = lv[name]
            n = lv["concurrency"] * 2  # 2 requests per client by default
            assert s["requests"] == n and s["errors"] == 0 and s["tokens"] == 4 * n
            # Fixed lengths on both servers (EOG banned); llama-cpp-python sends no usage, its
            # chunks are counted, one token each.
            assert [r["tokens"] for r in s["per_request"]] == [4] * n
            assert all(r["error"] is None and r["finish_reason"] == "length" for r in s["per_request"])
            assert all(0 < r["ttft_s"] <= r["latency_s"] for r in s["per_request"])
            assert s["tokens_per_s"] == s["tokens"] / s["wall_s"]
        assert all(r["usage_reported"] for r in lv["appliance"]["per_request"])
        assert lv["ratios"] == {"llama-cpp-python": lv["appliance"]["tokens_per_s"]
                                / lv["llama-cpp-python"]["tokens_per_s"]}

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = out.splitlines()
    assert f"work directory (configs, store, logs): {workdir}" in lines
    assert lines[-1] == f"plot: {png}"
    rows = [ln.split("|") for ln in lines if ln.split("|")[0].strip().isdigit()]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        ("1", "appliance"), ("1", "llama-cpp-python"), ("2", "appliance"), ("2", "llama-cpp-python")]
    assert {p.name for p in (workdir / "logs").iterdir()} == {"appliance.log", "llama-cpp-python.log"}


async def test_scenarios_against_the_appliance(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """schema: a json_schema stream (an enum the random model finishes in a few tokens) among
    plain ones; overload: 8 clients against 2 slots and 1 queue place; swap: unload, then the
    first token, against llama.cpp's bare load time."""
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "string", "enum": ["yes", "no"]}))
    workdir, out_file = tmp_path / "wd", tmp_path / "result.json"
    rc, out, err = await bench("--compare", "", "--model-file", str(tiny_models["a"]), *PINNED, "--max-waiting", "1",
                               "--concurrency", "1", "--max-tokens", "8", "--requests-per-client", "1",
                               "--scenarios", "schema,overload,swap", "--schema-concurrency", "2",
                               "--schema-file", str(schema), "--overload-clients", "8", "--swap-trials", "1",
                               "--workdir", str(workdir), "--json-out", str(out_file))
    assert rc == 0 and err == "", err
    result = json.loads(out_file.read_text())
    no_servers_left(result, workdir)
    assert list(result["servers"]) == ["appliance"]
    (lv,) = result["levels"]
    assert lv["ratios"] == {} and lv["appliance"]["errors"] == 0 and lv["appliance"]["tokens"] == 8

    m = result["schema_mix"]
    assert m["concurrency"] == 2
    assert m["all_plain"]["requests"] == 4 and m["all_plain"]["errors"] == 0  # 2 clients x 1 x 2 runs
    assert m["all_plain"]["tokens"] == 4 * 8
    # The schema client sends until the plain one is done: at least one request per mixed run.
    assert m["schema_requests"] >= 2 and m["mixed"]["requests"] == 2 + m["schema_requests"]
    assert m["schema_errors"] == m["schema_truncated"] == 0
    assert m["schema_valid_json"] == m["schema_requests"]  # every answer finished and parses
    assert m["mixed"]["errors"] == 0
    assert m["plain_tokens_per_s_in_mixed"] == 2 * 8 / m["mixed"]["wall_s"]
    assert m["expected_plain_tokens_per_s"] == m["all_plain"]["tokens_per_s"] / 2
    assert m["cost"] == 1 - m["plain_tokens_per_s_in_mixed"] / m["expected_plain_tokens_per_s"]

    o = result["overload"]
    assert o["clients"] == o["attempts"] == 8
    assert o["admitted"] + o["rejected_429"] == 8
    assert o["admitted"] >= 3  # 2 slots + 1 waiting: the first three always get in
    # How many are refused depends on how the 8 arrivals overlap 8-token replies (a fast engine
    # may finish some before the others arrive): the accounting is what is checked here; the
    # queue's 429 itself is tested in test_scheduler.py and test_hostile.py.
    assert o["rejected_share"] == o["rejected_429"] / 8
    assert o["server_errors_5xx"] == o["other_errors"] == 0 and o["first_other_error"] is None
    assert bool(o["retry_after_s"]) == (o["rejected_429"] > 0)  # every 429 says when to retry
    assert all(r > 0 for r in o["retry_after_s"])

    h = result["hot_swap"]
    assert h["trials"] == 1 and len(h["swap_ttft_s"]) == len(h["loaded_ttft_s"]) == 1
    assert h["swap_ttft_s"][0] > 0 and h["loaded_ttft_s"][0] > 0
    bare = h["bare"]
    assert len(bare["runs"]) == 3
    totals = [r["total_s"] for r in bare["runs"]]
    assert bare["total_s_median"] == statistics.median(totals) and bare["total_s_min"] == min(totals)
    for r in bare["runs"]:
        assert r["total_s"] == pytest.approx(r["model_s"] + r["context_s"] + r["first_decode_s"])
    v = h["verdict"]
    assert v["swap_ttft_s_median"] == h["swap_ttft_s"][0] and v["loaded_ttft_s_median"] == h["loaded_ttft_s"][0]
    assert v["bare_load_s_median"] == bare["total_s_median"]
    assert v["reference_s"] == bare["total_s_median"] + h["loaded_ttft_s"][0]
    assert v["ratio"] == v["swap_ttft_s_median"] / v["reference_s"]

    lines = out.splitlines()
    assert any(ln.startswith("json_schema mix at 2: ") and f"valid JSON {m['schema_valid_json']}, cut at max_tokens 0"
               in ln for ln in lines)
    assert any(ln.startswith("overload: 8 clients, 8 attempts: ") and ", 5xx 0, " in ln for ln in lines)
    assert any(ln.startswith("hot swap: first token ") and "bare llama.cpp load" in ln for ln in lines)


async def test_servers_stop_when_a_run_fails(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """A prompt longer than the context fails the warm-up: exit 1, one line, servers stopped."""
    workdir = tmp_path / "wd"
    rc, out, err = await bench("--compare", "", "--model-file", str(tiny_models["a"]), *PINNED,
                               "--concurrency", "1", "--max-tokens", "4", "--prompt-tokens", "400",
                               "--workdir", str(workdir))
    assert rc == 1
    (line,) = err.splitlines()
    assert line.startswith("appliance: error: http://127.0.0.1:") and ": HTTP 400: " in line
    url = line.split(" ")[2].rstrip(":")
    no_servers_left({"servers": {"appliance": {"url": url}}}, workdir)


async def test_sigterm_stops_the_servers(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """The servers run in their own sessions: without the CLI stopping them on SIGTERM they
    would outlive it. Many short levels keep the run going after the first row is printed."""
    workdir = tmp_path / "wd"
    p = await start_bench("--compare", "", "--model-file", str(tiny_models["a"]), *PINNED,
                          "--concurrency", ",".join(["1"] * 1000), "--requests-per-client", "1",
                          "--max-tokens", "4", "--workdir", str(workdir))
    try:
        assert p.stdout is not None
        lines: list[str] = []
        while not lines or not lines[-1].startswith("   1 | appliance"):  # the first level's row
            line = await asyncio.wait_for(p.stdout.readline(), timeout=120)
            assert line, "".join(lines)
            lines.append(line.decode())
        assert len(processes_with(str(workdir / "appliance" / "appliance.toml"), "serve")) == 1
        p.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(p.communicate(), timeout=120)
    finally:
        if p.returncode is None:
            p.kill()
            await p.wait()
    assert p.returncode == 130 and err.decode().splitlines() == ["appliance: interrupted"]
    port = tomllib.loads((workdir / "appliance" / "appliance.toml").read_text())["server"]["port"]
    no_servers_left({"servers": {"appliance": {"url": f"http://127.0.0.1:{port}"}}}, workdir)


async def test_usage_errors_print_one_line_and_start_nothing(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    tiny, root = str(tiny_models["a"]), str(Path(__file__).resolve().parents[1])
    no_matplotlib = tmp_path / "no-matplotlib"  # `import matplotlib` fails, as where it is not installed
    (no_matplotlib / "matplotlib").mkdir(parents=True)
    (no_matplotlib / "matplotlib" / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    workdir, tmpdir = tmp_path / "wd", tmp_path / "tmp"
    tmpdir.mkdir()
    missing = tmp_path / "missing"
    cases: list[tuple[list[str], dict[str, str], str]] = [
        (["--compare", "llama-cpp-python"], {}, "--compare needs --model-file (the GGUF every server loads)"),
        (["--compare", "llama-server", "--model-file", tiny, "--llama-server", str(missing), "--workdir", str(workdir)],
         {}, f"--llama-server {missing}: no such file"),
        (["--compare", "llama-server-np1", "--model-file", tiny, "--llama-server", str(missing)],  # a temporary workdir
         {"TMPDIR": str(tmpdir)}, f"--llama-server {missing}: no such file"),
        (["--compare", "", "--model-file", tiny, "--schema-file", str(missing)], {},
         f"--schema-file {missing}: No such file or directory"),
        (["--compare", "", "--model-file", tiny, "--llama-bench", str(missing)], {}, f"--llama-bench {missing}: no such file"),
        (["--compare", "", "--model-file", tiny, "--plot", str(tmp_path / "x.png")], {"PYTHONPATH": f"{no_matplotlib}:{root}"},
         "--plot needs matplotlib, which is not installed: pip install 'appliance[bench]'"),
        (["--url", "http://127.0.0.1:1", "--gpus", "split"], {}, "--gpus and --gpus-on-cpu need --compare"),
        (["--compare", "", "--model-file", tiny, "--gpus-on-cpu"], {}, "--gpus-on-cpu rehearses --gpus: give --gpus too"),
        (["--compare", "", "--model-file", tiny, "--gpus", "per-model", "--scenarios", "swap"], {},
         "--gpus per-model measures levels only: drop --scenarios/--plot"),
        (["--compare", "llama-cpp-python", "--model-file", tiny, "--gpus", "per-model", "--workdir", str(workdir)], {},
         "--gpus per-model: llama-cpp-python cannot be pinned to a GPU (llama-server kinds only)"),
    ]
    results = await asyncio.gather(*(bench(*args, **env) for args, env, _ in cases))
    for (args, _, message), (rc, out, err) in zip(cases, results):
        assert (rc, out, err.splitlines()) == (2, "", [f"appliance: error: {message}"]), args
    assert not workdir.exists() and list(tmpdir.iterdir()) == []  # a refused peer leaves nothing behind
    assert not (tmp_path / "x.png").exists()
