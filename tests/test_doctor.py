"""`appliance doctor`: real config, store, llama-cpp-python build and sockets; only the GPU's
readings (and RAM size, for the memory check) are injected."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.cli.doctor import Probes, run
from appliance.hardware import GpuStats


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def setup(tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("APPLIANCE_STORE", str(tmp_path / "store"))
    (tmp_path / "models.toml").write_text(
        f'[tiny]\nsource = "file://{tiny_gguf}"\ncontext = 512\nparallel = 2\n\n'
        f'[absent]\nsource = "file://{tmp_path}/nope.gguf"\n'
    )
    (tmp_path / "appliance.toml").write_text(f"[server]\nport = {free_port()}\n")
    assert main(["pull", "tiny"]) == 0
    return tmp_path


def doctor(capsys: pytest.CaptureFixture[str], probes: Probes | None = None) -> tuple[int, str]:
    capsys.readouterr()
    rc = run(argparse.Namespace(config=None, models=None, json=False), probes)
    return rc, capsys.readouterr().out


def no_gpu() -> Probes:
    return Probes(gpus=lambda: [])


def test_healthy(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = doctor(capsys, no_gpu())
    assert rc == 0, out
    assert "[ ok ] store: tiny: verified" in out
    assert "[warn] store: absent: missing; run `appliance pull absent`" in out
    assert "built for CPU" in out  # this machine's build
    assert "[ ok ] memory: tiny: needs about" in out
    assert "is free" in out and out.strip().endswith("healthy")


def test_gpu_with_a_cpu_only_build_fails_loudly(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = GpuStats(0, "NVIDIA GeForce RTX 3090", 24 << 30, 23 << 30, 1 << 30, 40.0, 30.0, 0.0)
    rc, out = doctor(capsys, Probes(gpus=lambda: [fake], driver=lambda: "550.54", nvcc=lambda: None))
    assert rc == 1
    assert "GPU 0: NVIDIA GeForce RTX 3090, 24.0 GiB" in out
    assert "[FAIL] llama.cpp: !!! a GPU is present but llama-cpp-python was built for the CPU only" in out
    assert "-DGGML_CUDA=on" in out
    assert "[warn] toolkit: nvcc (CUDA toolkit) not found" in out


def test_model_that_cannot_fit(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    probes = Probes(gpus=lambda: [], ram=lambda: (1 << 30) + (2 << 20))  # 2 MiB above the reserve
    rc, out = doctor(capsys, probes)
    assert rc == 1
    assert "[FAIL] memory: tiny: needs about" in out and "it will not load" in out


def test_config_error(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (setup / "appliance.toml").write_text("[server]\nprot = 1\n")
    rc, out = doctor(capsys, no_gpu())
    assert rc == 1
    assert "[FAIL] config:" in out and "server.prot: unknown key" in out


def test_port_in_use(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (setup / "appliance.toml").write_text(f"[server]\nport = {port}\n")
        rc, out = doctor(capsys, no_gpu())
    assert rc == 1
    assert f"[FAIL] port: 127.0.0.1:{port} is in use by another program" in out


def test_cli_entry(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Wired into the `appliance` command with the real probes: every area is checked, and a
    failed check (the port, taken here, so this does not depend on the machine) exits 1."""
    import json

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (setup / "appliance.toml").write_text(f"[server]\nport = {port}\n")
        rc = main(["doctor", "--json"])
    findings = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert {"llama.cpp", "config", "store", "memory", "port", "daemon"} <= {f["area"] for f in findings}
    assert [f["level"] for f in findings if f["area"] == "port"] == ["fail"]
    assert rc == 1


def test_fixed_budget_is_what_models_are_checked_against(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = setup / "appliance.toml"
    conf.write_text(conf.read_text() + '[memory]\nbudget = "1MiB"\n')  # the machine has GiBs of RAM
    rc, out = doctor(capsys, no_gpu())
    assert rc == 1
    assert "[FAIL] memory: tiny: needs about" in out and "memory.budget allows 1.0 MiB" in out


def test_doctor_creates_no_store_folders(tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "fresh-store"
    monkeypatch.setenv("APPLIANCE_STORE", str(store))
    (tmp_path / "models.toml").write_text(f'[tiny]\nsource = "file://{tiny_gguf}"\n')
    (tmp_path / "appliance.toml").write_text(f"[server]\nport = {free_port()}\n")
    _, out = doctor(capsys, no_gpu())
    assert not store.exists()
    assert f"[warn] store: {store} does not exist yet" in out


def test_rpc_workers_are_checked_by_connecting(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A worker that answers is ok; one nobody listens on fails, naming it and its models."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        up = f"127.0.0.1:{listening.getsockname()[1]}"
        down = f"127.0.0.1:{free_port()}"
        (setup / "appliance.toml").write_text(f'[server]\nport = {free_port()}\n[cluster]\nrpc = ["{up}"]\n')
        with (setup / "models.toml").open("a") as f:
            f.write(f'\n[big]\nsource = "file://{setup}/big.gguf"\nrpc = ["{down}"]\n')
        # the listener is no worker: its devices are what a worker's ggml-rpc would report
        rc, out = doctor(capsys, Probes(gpus=lambda: [], rpc_built=lambda: True,
                                        worker_memory=lambda ep: [(f"rpc:{ep}#0", 3 << 30, 8 << 30)]))
    assert rc == 1
    assert f"[ ok ] rpc: worker {up} reachable (models: tiny, absent)" in out
    assert f"[ ok ] rpc: rpc:{up}#0: 3.0 GiB free of 8.0 GiB" in out
    assert f"[FAIL] rpc: RPC worker {down} is unreachable" in out and "models big will not load" in out
    rc, out = doctor(capsys, Probes(gpus=lambda: [], rpc_built=lambda: False))
    assert "[FAIL] rpc: models name RPC workers but llama-cpp-python was built without -DGGML_RPC=ON" in out
