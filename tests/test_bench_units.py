"""appliance/bench without processes: the flags every peer is pinned to, the generated appliance
config, llama-bench's JSON, the table and the scenario lines, the per-level figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.bench import ceiling, report, servers
from appliance.bench.load import BenchResult, LevelResult, RequestResult, Target, Workload, percentile
from appliance.engine.cpufeatures import extra_buffers_safe
from appliance.errors import BenchError, UsageError

MODEL = Path("/models/m.gguf")


def _flags(argv: list[str]) -> dict[str, str | None]:
    """`-x value` pairs and bare `--switch`es (value None) of an argv, after the binary."""
    out: dict[str, str | None] = {}
    i = 1
    while i < len(argv):
        value = argv[i + 1] if i + 1 < len(argv) else "-"
        if not value.startswith("-") or value.lstrip("-").isdigit():  # "-1" is a value
            out[argv[i]], i = argv[i + 1], i + 2
        else:
            out[argv[i]], i = None, i + 1
    return out


def test_llama_server_is_pinned_to_the_appliance_settings() -> None:
    s = servers.Settings(model=MODEL, context=1024, parallel=8, threads=6)
    argv = servers.llama_server_argv("/opt/llama-server", s, 8123, s.parallel)
    assert argv[0] == "/opt/llama-server"
    flags = _flags(argv)
    assert flags == {
        "-m": str(MODEL), "--host": "127.0.0.1", "--port": "8123",
        "-c": "8192", "-np": "8",  # context per slot x slots: every slot gets the appliance's context
        "--no-kv-unified": None, "--swa-full": None,  # per-slot KV streams, as ours
        "-fa": "auto", "-b": "512", "-ub": "512", "-ngl": "999", "-ctk": "f16", "-ctv": "f16",
        "--cache-ram": "0", "--fit": "off",  # no prompt cache in RAM, no automatic fitting
        "-t": "6", "-tb": "6", "-a": servers.MODEL_ID, "--no-webui": None,
        **({} if extra_buffers_safe() else {"--no-repack": None}),
    }


def test_llama_server_np1_and_gpu_layers(tmp_path: Path) -> None:
    binary = tmp_path / "llama-server"
    binary.write_text("")
    s = servers.Settings(model=MODEL, context=512, parallel=4, gpu_layers=20, threads=2, kv_cache_type="q8_0")
    np1 = servers.spec_for("llama-server-np1", s, tmp_path / "wd", str(binary))
    flags = _flags(np1.argv)
    assert np1.argv[0] == str(binary) and np1.ready_path == "/health" and np1.api_key is None
    assert (flags["-c"], flags["-np"], flags["-ngl"], flags["-ctk"], flags["-ctv"]) == ("512", "1", "20", "q8_0", "q8_0")
    assert flags["--port"] == str(np1.port) and np1.url == f"http://127.0.0.1:{np1.port}"
    full = servers.spec_for("llama-server", s, tmp_path / "wd", str(binary))
    assert (_flags(full.argv)["-c"], _flags(full.argv)["-np"]) == ("2048", "4")
    assert full.target() == Target("llama-server", full.url, None, servers.MODEL_ID)
    assert not (tmp_path / "wd").exists()  # peers write nothing
    with pytest.raises(UsageError, match=r"^--llama-server /nope: no such file$"):
        servers.spec_for("llama-server", s, tmp_path, "/nope")
    bs = servers.spec_for("llama-server-bs", s, tmp_path / "wd", str(binary))
    assert bs.argv[-1] == "--backend-sampling" and _flags(bs.argv)["-np"] == "4"
    assert "--backend-sampling" not in full.argv
    with pytest.raises(UsageError, match="expected one of llama-server, llama-server-np1, llama-server-bs, "
                                         "llama-cpp-python"):
        servers.spec_for("vllm", s, tmp_path, None)


def test_llama_cpp_python_server_is_pinned() -> None:
    s = servers.Settings(model=MODEL, context=256, parallel=16, threads=3, kv_cache_type="q4_0")
    argv = servers.llama_cpp_python_argv(s, 9001)
    assert argv[1:3] == ["-m", "appliance.bench.lcpserver"]
    flags = _flags(argv[2:])  # after `python -m`
    assert flags == {
        "--model": str(MODEL), "--model_alias": servers.MODEL_ID, "--host": "127.0.0.1", "--port": "9001",
        "--n_ctx": "256",  # one sequence: the context of one slot
        "--n_batch": "512", "--n_ubatch": "512", "--n_gpu_layers": "-1", "--flash_attn": "true",
        "--n_threads": "3", "--n_threads_batch": "3", "--type_k": "2", "--type_v": "2",
        "--verbose": "false", "--interrupt_requests": "false",
    }


def test_appliance_config_is_valid_and_pinned(tmp_path: Path) -> None:
    """Paths with a quote and a backslash (TOML string escapes) come back as they were."""
    from appliance.config import load_settings

    odd = tmp_path / 'it\'s "odd" \\ dir'
    model = odd / "m.gguf"
    model.parent.mkdir()
    model.write_bytes(b"")
    s = servers.Settings(model=model, context=300, parallel=3, gpu_layers=None, max_waiting=5)
    cfg, models = servers.appliance_files(odd / "wd", s, 8555)
    loaded = load_settings(cfg, models)
    assert loaded.config.server.port == 8555 and loaded.config.server.host == "127.0.0.1"
    assert loaded.config.queue.max_waiting == 5
    assert loaded.config.store.path == odd / "wd" / "store"
    (mid,) = loaded.catalog.models
    m = loaded.catalog.models[mid]
    assert mid == servers.MODEL_ID and m.source == f"file://{model}"
    assert (m.context, m.parallel, m.gpu_layers, m.kv_cache_type) == (300, 3, "all", "f16")
    assert m.keep_alive == float("inf")  # never unloaded while measured


# llama-bench -o json: one object per test; -p 0 -n 128 gives only the decode test, a default run
# a prompt test (n_prompt 512, n_gen 0) too.
LLAMA_BENCH_ROW = {
    "build_commit": "b3c1a5e", "build_number": 6500, "cpu_info": "AMD EPYC 9654 96-Core Processor",
    "gpu_info": "NVIDIA H100 80GB HBM3", "backends": "CUDA", "model_filename": "/models/m.gguf",
    "model_type": "llama 8B Q4_K - Medium", "model_size": 4920734720, "model_n_params": 8030261248,
    "n_batch": 512, "n_ubatch": 512, "n_threads": 16, "cpu_mask": "0x0", "cpu_strict": False, "poll": 50,
    "type_k": "f16", "type_v": "f16", "n_gpu_layers": 999, "split_mode": "layer", "main_gpu": 0,
    "no_kv_offload": False, "flash_attn": True, "tensor_split": "0.00", "use_mmap": True, "embeddings": False,
    "n_depth": 0, "test_time": "2025-09-01T10:00:00Z", "avg_ns": 0, "stddev_ns": 0,
}


def test_ceiling_parses_llama_bench_json() -> None:
    rows = [
        {**LLAMA_BENCH_ROW, "n_prompt": 512, "n_gen": 0, "avg_ts": 9876.5, "stddev_ts": 12.0},
        {**LLAMA_BENCH_ROW, "n_prompt": 0, "n_gen": 128, "avg_ns": 901234567, "stddev_ns": 1234,
         "avg_ts": 142.031, "stddev_ts": 0.42, "samples_ns": [901000000, 901234567, 901469134],
         "samples_ts": [142.06, 142.03, 142.0]},
    ]
    assert ceiling.parse(json.dumps(rows, indent=2) + "\n") == {
        "tokens_per_s": 142.031, "stddev": 0.42, "n_gen": 128, "backend": "CUDA",
        "gpu": "NVIDIA H100 80GB HBM3", "cpu": "AMD EPYC 9654 96-Core Processor",
    }
    only_decode = [{**rows[1], "backends": "", "backend": "CPU", "gpu_info": ""}]
    parsed = ceiling.parse(json.dumps(only_decode))
    assert (parsed["backend"], parsed["gpu"]) == ("CPU", "")


@pytest.mark.parametrize("stdout", ["", "llama-bench: error", "{}", "[]",
                                    json.dumps([{**LLAMA_BENCH_ROW, "n_prompt": 512, "n_gen": 0, "avg_ts": 1.0}]),
                                    json.dumps([{**LLAMA_BENCH_ROW, "n_prompt": 0, "n_gen": 128}])])
def test_ceiling_without_a_decode_result(stdout: str) -> None:
    with pytest.raises(BenchError, match="^llama-bench printed no decode result"):
        ceiling.parse(stdout)


def test_ceiling_argv_is_pinned() -> None:
    s = servers.Settings(model=MODEL, gpu_layers=0, threads=4, batch=256)
    flags = _flags(ceiling.argv("/opt/llama-bench", s, 64))
    assert flags == {"-m": str(MODEL), "-p": "0", "-n": "64", "-ngl": "0", "-fa": "1", "-t": "4", "-b": "256",
                     "-ub": "256", "-ctk": "f16", "-ctv": "f16", "-r": "3", "-o": "json"}


def _req(ttft: float, latency: float, tokens: int, gaps: list[float] | None = None, **kw: object) -> RequestResult:
    times = [ttft]
    for g in gaps or []:
        times.append(times[-1] + g)
    return RequestResult(ttft_s=ttft, latency_s=latency, tokens=tokens, usage_reported=True, status=200,
                         chunk_times=times, **kw)  # type: ignore[arg-type]


def _level(concurrency: int, wall: float, reqs: list[RequestResult]) -> LevelResult:
    return LevelResult(concurrency, wall, reqs, runs=1)


def test_level_figures() -> None:
    lv = _level(2, 2.0, [_req(0.1, 0.5, 10, [0.01, 0.03]), _req(0.3, 0.9, 10, [0.02]),
                         RequestResult(status=429, error="HTTP 429: busy", latency_s=0.01)])
    assert (lv.tokens, lv.tokens_per_s, lv.requests_per_s) == (20, 10.0, 1.0)
    assert (lv.errors, lv.rejected, lv.server_errors) == (1, 1, 0)
    assert lv.ttft_p50_s == pytest.approx(0.2) and lv.ttft_p95_s == pytest.approx(0.29)
    assert lv.itl_p50_s == pytest.approx(0.02) and lv.itl_p95_s == pytest.approx(0.029)
    assert lv.decode_tokens_per_s_mean == pytest.approx((9 / 0.4 + 9 / 0.6) / 2)
    assert lv.first_error == "HTTP 429: busy"
    assert percentile([], 0.5) is None and percentile([3.0], 0.95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5


def _result() -> BenchResult:
    targets = [Target("appliance", "http://127.0.0.1:1"), Target("llama-server", "http://127.0.0.1:2/v1")]
    levels = [
        {"appliance": _level(1, 1.0, [_req(0.0123, 0.5, 50, [0.0101, 0.0104])]),
         "llama-server": _level(1, 1.0, [_req(0.0155, 0.6, 40, [0.0125])])},
        {"appliance": _level(16, 2.0, [_req(0.25, 1.0, 1000, [0.02])]),
         "llama-server": _level(16, 2.0, [RequestResult(status=500, error="HTTP 500: boom")])},
    ]
    return BenchResult(Workload(max_tokens=50), {"appliance": "bench", "llama-server": "bench"}, targets, levels,
                       [[["appliance", "llama-server"]], [["llama-server", "appliance"]]])


def test_report_table() -> None:
    r = _result()
    assert report.header() == ("conc | server           |    tok/s | vs first |  req/s | TTFT p50 ms | TTFT p95 ms "
                               "| ITL p50 ms | ITL p95 ms | errors")
    assert report.rows(r.levels[0]) == [
        "   1 | appliance        |     50.0 |        - |   1.00 |          12 |          12 |       10.2 |       10.4 |      0",
        "   1 | llama-server     |     40.0 |     1.25 |   1.00 |          16 |          16 |       12.5 |       12.5 |      0",
    ]
    assert report.rows(r.levels[1]) == [  # no tok/s on the peer: no ratio; no requests: no percentiles
        "  16 | appliance        |    500.0 |        - |   0.50 |         250 |         250 |       20.0 |       20.0 |      0",
        "  16 | llama-server     |      0.0 |        - |   0.00 |           - |           - |          - |          - |      1",
    ]
    assert all(len(row) == len(report.header()) for lv in r.levels for row in report.rows(lv))
    long = {"llama-server-bs 2 GPUs": r.levels[0]["appliance"], "x": r.levels[0]["llama-server"]}
    assert report.header(long).startswith("conc | server                 |    tok/s |")  # as wide as the longest name
    assert all(len(row) == len(report.header(long)) for row in report.rows(long))


def test_result_json() -> None:
    r = _result()
    d = r.to_dict()
    assert d["servers"] == {"appliance": {"url": "http://127.0.0.1:1", "model": "bench"},
                            "llama-server": {"url": "http://127.0.0.1:2", "model": "bench"}}
    assert [lv["ratios"] for lv in d["levels"]] == [{"llama-server": 1.25}, {"llama-server": None}]
    assert d["levels"][1]["order"] == [["llama-server", "appliance"]]
    assert d["levels"][0]["appliance"]["per_request"][0]["tokens"] == 50
    assert d["levels"][1]["llama-server"]["per_request"][0]["error"] == "HTTP 500: boom"
    short = r.to_dict(per_request=False)
    assert all("per_request" not in lv[n] for lv in short["levels"] for n in ("appliance", "llama-server"))
    assert r.first_error == ("llama-server", "HTTP 500: boom")


def test_report_scenario_lines() -> None:
    extra = {
        "ceiling": {"tokens_per_s": 142.03},
        "schema_mix": {"concurrency": 4, "plain_tokens_per_s_in_mixed": 270.0, "expected_plain_tokens_per_s": 300.0,
                       "all_plain": {"tokens_per_s": 400.0}, "cost": 0.1, "schema_requests": 3,
                       "schema_valid_json": 2, "schema_truncated": 1, "schema_errors": 0},
        "hot_swap": {"trials": 2, "swap_ttft_s": [1.0, 2.0], "loaded_ttft_s": [0.01, 0.03],
                     "verdict": {"swap_ttft_s_median": 1.5, "bare_load_s_median": 1.2, "loaded_ttft_s_median": 0.02,
                                 "reference_s": 1.22, "ratio": 1.5 / 1.22}},
        "overload": {"clients": 64, "attempts": 128, "admitted": 100, "rejected_429": 28, "rejected_share": 28 / 128,
                     "server_errors_5xx": 0, "other_errors": 0, "admitted_ttft_p50_s": 0.05,
                     "admitted_latency_p50_s": 1.0, "admitted_latency_p95_s": 2.5},
    }
    assert report.scenarios(extra) == [
        "llama-bench single-stream decode (ceiling): 142.0 tok/s",
        "json_schema mix at 4: plain streams 270.0 tok/s beside 1 schema stream vs 300.0 expected from all-plain "
        "(400.0 x 3/4): cost 10.0%; schema requests 3, valid JSON 2, cut at max_tokens 1, errors 0",
        "hot swap: first token 1.50s after unload vs bare llama.cpp load 1.20s + loaded TTFT 20ms = 1.22s: ratio 1.23",
        "overload: 64 clients, 128 attempts: 100 admitted, 28 got 429 (21.9%), 5xx 0, other errors 0; "
        "admitted TTFT p50 50 ms, latency p50/p95 1000/2500 ms",
    ]
    del extra["hot_swap"]["verdict"]  # --url: no bare load to compare with
    assert report.scenarios({"hot_swap": extra["hot_swap"]}) == [
        "hot swap: first token 1.50s after unload, 20ms on the loaded model (medians of 2)"]


def test_workload_bodies() -> None:
    w = Workload(endpoint="completions", max_tokens=7, banned=(2, 5))
    body = w.body("m", 3)
    assert body == {"model": "m", "stream": True, "stream_options": {"include_usage": True}, "temperature": 0,
                    "max_tokens": 7, "logit_bias": {"2": -100, "5": -100},
                    "prompt": "Request 3 of run 0: write a short story about the number 24."}
    assert w.prompt_for(3) != w.prompt_for(4)  # distinct prompts: no prefix cache shortcut on one side
    assert Workload(seed=7).prompt_for(3) != w.prompt_for(3)  # nor from an earlier run
    assert Workload(temperature=0.8).body("m", 1)["temperature"] == 0.8  # the only sampling field sent
    chat = Workload(endpoint="chat", prompt="hi").body("m", 1, max_tokens=2)
    assert chat["messages"] == [{"role": "user", "content": "hi"}] and chat["max_tokens"] == 2
    schema = w.body("m", 1, schema={"type": "boolean"})
    assert "logit_bias" not in schema and "prompt" not in schema  # the grammar decides where it ends
    assert schema["response_format"] == {"type": "json_schema",
                                         "json_schema": {"name": "answer", "schema": {"type": "boolean"}}}
    assert w.path() == "/v1/completions" and w.path(schema=True) == "/v1/chat/completions"


def test_mixed_prompts_every_fourth_long_and_short_ttft_apart() -> None:
    w = Workload(prompt_tokens=None, long_every=4, long_tokens=300)
    assert [w.is_long(i) for i in range(8)] == [False, False, False, True] * 2
    assert len(w.prompt_for(3).split()) > 280 > 20 > len(w.prompt_for(2).split())
    reqs = [RequestResult(ttft_s=0.01 * (i + 1), tokens=1, long=False) for i in range(3)]
    reqs.append(RequestResult(ttft_s=5.0, tokens=1, long=True))
    level = LevelResult(4, 1.0, reqs, runs=1)
    assert level.mixed and level.short_ttft_p95_s is not None and level.short_ttft_p95_s < 0.05
    assert level.ttft_p95_s is not None and level.ttft_p95_s > 1.0
    assert "short prompts' TTFT p50/p95 20/29 ms" in report.rows({"appliance": level})[0]
    plain = LevelResult(4, 1.0, reqs[:3], runs=1)
    assert not plain.mixed and plain.short_ttft_p95_s is None
    assert "short" not in report.rows({"appliance": plain})[0]


def test_two_gpu_flags_for_llama_server(tmp_path: Path) -> None:
    """per-model: one llama-server per GPU (-dev CUDAn, no split), each with all the slots;
    split: layers over every GPU; --gpus-on-cpu: no device flag at all (a CPU build rejects
    CUDA devices); llama-cpp-python's server cannot be pinned per GPU."""
    binary = tmp_path / "llama-server"
    binary.write_text("")
    per_model = servers.Settings(model=MODEL, context=512, parallel=4, threads=2, gpus="per-model")
    specs = servers.specs_for("llama-server-bs", per_model, tmp_path / "wd", str(binary))
    assert [(s.name, s.device) for s in specs] == [("llama-server-bs-gpu0", 0), ("llama-server-bs-gpu1", 1)]
    assert [(_flags(s.argv)["-dev"], _flags(s.argv)["-sm"], _flags(s.argv)["-np"]) for s in specs] == [
        ("CUDA0", "none", "4"), ("CUDA1", "none", "4")]
    assert all(s.argv[-1] == "--backend-sampling" for s in specs) and specs[0].port != specs[1].port
    assert [s.target().name for s in specs] == ["llama-server-bs-gpu0", "llama-server-bs-gpu1"]

    split = servers.Settings(model=MODEL, gpus="split")
    (one,) = servers.specs_for("llama-server", split, tmp_path / "wd", str(binary))
    assert one.name == "llama-server" and _flags(one.argv)["-sm"] == "layer" and "-dev" not in one.argv

    for s in (servers.Settings(model=MODEL, gpus="per-model", pin_devices=False),
              servers.Settings(model=MODEL, gpus="split", pin_devices=False), servers.Settings(model=MODEL)):
        argvs = [x.argv for x in servers.specs_for("llama-server", s, tmp_path / "wd", str(binary))]
        assert len(argvs) == (2 if s.gpus == "per-model" else 1)
        assert all("-dev" not in a and "-sm" not in a for a in argvs)
    with pytest.raises(UsageError, match=r"^--gpus per-model: llama-cpp-python cannot be pinned to a GPU"):
        servers.specs_for("llama-cpp-python", per_model, tmp_path / "wd", None)
    assert not (tmp_path / "wd").exists()


@pytest.mark.parametrize(("gpus", "expected"), [(None, {"bench": None}), ("split", {"bench": "split"}),
                                                ("per-model", {"bench-gpu0": 0, "bench-gpu1": 1})])
def test_two_gpu_appliance_models(tmp_path: Path, gpus: str | None, expected: dict[str, object]) -> None:
    """The appliance's catalog: `gpu` as each mode needs it (absent: "auto"), the same file."""
    from appliance.config import load_settings

    model = tmp_path / "m.gguf"
    model.write_bytes(b"")
    s = servers.Settings(model=model, gpus=gpus)  # type: ignore[arg-type]
    loaded = load_settings(*servers.appliance_files(tmp_path / "wd", s, 8555))
    models = loaded.catalog.models
    assert {mid: m.gpu for mid, m in models.items()} == {k: "auto" if v is None else v for k, v in expected.items()}
    assert {m.source for m in models.values()} == {f"file://{model}"}
    assert list(models) == s.model_ids()
    assert ("gpus" in s.describe()) == (gpus is not None)


def test_markdown_of_a_file_that_is_no_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from appliance.bench import markdown

    bad, missing = tmp_path / "bad.json", tmp_path / "missing.json"
    bad.write_text('{"servers": {}}')
    assert markdown.main([str(bad)]) == 1 and markdown.main([str(missing)]) == 1 and markdown.main([]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{bad}: not an `appliance bench --json-out` result (KeyError")
    assert err[1].startswith(f"{missing}: not an `appliance bench --json-out` result (FileNotFoundError")
    assert err[2] == "usage: python -m appliance.bench.markdown RESULT.json"
