"""`appliance bench --compare --gpus per-model` end to end on the CPU: the appliance serves the
tiny GGUF twice (`gpu = 0`, `gpu = 1`: ignored on a RAM-only machine, as on this one) and the
llama-server peer runs as two processes, one per GPU (a stand-in binary that records its argv
and serves with llama-cpp-python). Every server's one-GPU and two-GPU runs are measured and
reported; no server is left running."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest

from appliance.bench import markdown
from bench_support import bench, no_servers_left

PINNED = ["--context", "128", "--parallel", "2", "--threads", "1"]


def _fake_llama_server(tmp_path: Path) -> Path:
    """An executable named llama-server that runs fake_llama_server.py."""
    binary = tmp_path / "llama-server"
    script = Path(__file__).with_name("fake_llama_server.py")
    binary.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    binary.chmod(0o755)
    return binary


def _device(argv: list[str]) -> str:
    return argv[argv.index("-dev") + 1]


async def test_per_model_against_two_llama_servers(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    pytest.importorskip("fastapi")  # the stand-in serves with llama-cpp-python's `server` extra
    workdir, out_file, argv_log = tmp_path / "wd", tmp_path / "result.json", tmp_path / "argv.jsonl"
    rc, out, err = await bench("--compare", "llama-server", "--gpus", "per-model", "--model-file", str(tiny_models["a"]),
                               *PINNED, "--llama-server", str(_fake_llama_server(tmp_path)),
                               "--concurrency", "2", "--max-tokens", "4", "--workdir", str(workdir),
                               "--json-out", str(out_file), FAKE_LLAMA_SERVER_LOG=str(argv_log))
    assert rc == 0 and err == "", err
    result = json.loads(out_file.read_text())
    servers = result["servers"]
    no_servers_left({"servers": {f"{n}{i}": {"url": u} for n, s in servers.items() for i, u in enumerate(s["urls"])}},
                    workdir)

    models = tomllib.loads((workdir / "appliance" / "models.toml").read_text())
    assert {m: e["gpu"] for m, e in models.items()} == {"bench-gpu0": 0, "bench-gpu1": 1}
    assert len({e["source"] for e in models.values()}) == 1  # the same GGUF twice
    started = [json.loads(line) for line in argv_log.read_text().splitlines()]
    assert sorted(_device(a) for a in started) == ["CUDA0", "CUDA1"]
    assert all(a[a.index("-sm") + 1] == "none" and a[a.index("-np") + 1] == "2" for a in started)

    assert result["gpus"] == "per-model" and result["settings_pinned"]["gpus"] == "per-model"
    assert servers["appliance"]["models"] == ["bench-gpu0", "bench-gpu1"]
    assert len(set(servers["appliance"]["urls"])) == 1  # one appliance serves both
    assert servers["llama-server"]["models"] == ["bench", "bench"]
    assert len(set(servers["llama-server"]["urls"])) == 2  # one llama-server per GPU
    (lv,) = result["levels"]
    assert lv["concurrency_per_model"] == 2 and lv["order"] == [["appliance", "llama-server"]]
    for name in servers:
        s = lv[name]
        one, both, each = s["one_gpu"], s["two_gpus"], s["per_model"]
        assert one["requests"] == 4 and one["tokens"] == 16 and one["errors"] == 0  # 2 clients x 2 requests x 4
        assert [e["requests"] for e in each] == [4, 4] and all(e["errors"] == 0 for e in each)
        assert both["concurrency"] == 4 and both["requests"] == 8 and both["tokens"] == 32 and both["errors"] == 0
        assert both["wall_s"] >= max(e["wall_s"] for e in each)  # the pair's wall spans both copies
        assert both["tokens_per_s"] == 32 / both["wall_s"]
        assert s["scaling"] == both["tokens_per_s"] / one["tokens_per_s"]
        assert both["ttft_p50_s"] is not None and both["ttft_p95_s"] >= both["ttft_p50_s"]
    assert lv["ratios"] == {"llama-server": lv["appliance"]["two_gpus"]["tokens_per_s"]
                            / lv["llama-server"]["two_gpus"]["tokens_per_s"]}

    lines = out.splitlines()
    rows = [[c.strip() for c in ln.split("|")[:2]] for ln in lines if ln.split("|")[0].strip().isdigit()]
    assert [r[1] for r in rows] == [f"{n} {k}" for n in ("appliance", "llama-server")
                                    for k in ("2 GPUs", "gpu0", "gpu1", "1 GPU")]
    assert any(ln.startswith("per-model at 2 clients per model: appliance ÷ llama-server (2 GPUs) ")
               and "2 GPUs ÷ 1 GPU: appliance " in ln for ln in lines)
    assert {p.name for p in (workdir / "logs").iterdir()} == {
        "appliance.log", "llama-server-gpu0.log", "llama-server-gpu1.log"}

    table = markdown.render(result).splitlines()  # the docs' table, one row per server
    assert len(table) == 4 and table[0].startswith("| clients per model | server | 2 GPUs tok/s | appliance ÷ peer |")
    assert [[c.strip() for c in r.split("|")[1:4]] for r in table[2:]] == [
        ["2", "**appliance**", f"{lv['appliance']['two_gpus']['tokens_per_s']:.1f}"],
        ["2", "llama-server", f"{lv['llama-server']['two_gpus']['tokens_per_s']:.1f}"]]
    assert table[3].split("|")[4].strip() == f"{lv['ratios']['llama-server']:.2f}"


async def test_split_rehearsed_on_the_cpu(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """--gpus split --gpus-on-cpu: the appliance gets `gpu = "split"` (ignored without GPUs), the
    peer no device flag (a CPU llama-server rejects CUDA devices); the levels are the usual ones."""
    pytest.importorskip("fastapi")
    workdir, out_file, argv_log = tmp_path / "wd", tmp_path / "result.json", tmp_path / "argv.jsonl"
    rc, out, err = await bench("--compare", "llama-server", "--gpus", "split", "--gpus-on-cpu",
                               "--model-file", str(tiny_models["a"]), *PINNED,
                               "--llama-server", str(_fake_llama_server(tmp_path)), "--concurrency", "1,2",
                               "--max-tokens", "4", "--workdir", str(workdir), "--json-out", str(out_file),
                               FAKE_LLAMA_SERVER_LOG=str(argv_log))
    assert rc == 0 and err == "", err
    result = json.loads(out_file.read_text())
    no_servers_left(result, workdir)
    models = tomllib.loads((workdir / "appliance" / "models.toml").read_text())
    assert {m: e["gpu"] for m, e in models.items()} == {"bench": "split"}
    (argv,) = [json.loads(line) for line in argv_log.read_text().splitlines()]
    assert "-dev" not in argv and "-sm" not in argv
    assert {k: result["settings_pinned"][k] for k in ("gpus", "pin_devices")} == {"gpus": "split", "pin_devices": False}
    assert list(result["servers"]) == ["appliance", "llama-server"]
    assert [lv["concurrency"] for lv in result["levels"]] == [1, 2]
    assert all(lv[n]["errors"] == 0 and lv[n]["tokens"] == 8 * lv["concurrency"]
               for lv in result["levels"] for n in result["servers"])
    table = markdown.render(result).splitlines()
    assert table[0].startswith("| clients | server | tok/s | appliance ÷ peer |") and len(table) == 2 + 4
    assert [[c.strip() for c in r.split("|")[1:3]] for r in table[2:]] == [
        [c, n] for c in ("1", "2") for n in ("**appliance**", "llama-server")]
