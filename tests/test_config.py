"""Configuration: every error class reaches the user as one stderr line naming file, key and
problem with exit 2; the search order and the environment overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.config import load_settings

SHA = "a" * 64
GOOD = '[m]\nsource = "hf://o/r/m.gguf"\n'


def run_ls(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["ls", *args])
    err = capsys.readouterr().err
    return code, err


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BAD_MODELS = [
    # (models.toml text, key named in the message, words of the problem)
    ('[m]\nsource = "hf://o/r/m.gguf"\ncolour = "red"\n', "m.colour", "unknown key"),
    ('[m]\nsource = "hf://o/r/m.gguf"\ncontext = "big"\n', "m.context", "integer"),
    ('[m]\nsource = "hf://o/r/m.gguf"\nkeep_alive = "soon"\n', "m.keep_alive", "invalid duration"),
    ('[m]\nsource = "hf://o/r/m.gguf"\n[m]\nsource = "hf://o/r/n.gguf"\n', "m", "twice"),
    (
        '[m]\nsource = "hf://o/r/m.gguf"\naliases = ["x"]\n[n]\nsource = "hf://o/r/n.gguf"\naliases = ["x"]\n',
        "n.aliases[0]",
        "duplicate alias 'x'",
    ),
    ('[m]\nsource = "hf://o/r/m.gguf"\n[n]\nsource = "hf://o/r/n.gguf"\naliases = ["m"]\n', "n.aliases[0]", "a model id"),
    # pydantic's own errors name list items the same way (api/schemas.py does too)
    ('[m]\nsource = "hf://o/r/m.gguf"\naliases = ["ok", 5]\n', "m.aliases[1]", "string"),
    ('[m]\nsource = "http://example.com/m.gguf"\n', "m.source", "must start with hf:// or file://"),
    ('[m]\nsource = "file://relative/m.gguf"\n', "m.source", "absolute path"),
    ('[m]\nsource = "hf://o/r/m.bin"\n', "m.source", ".gguf"),
    ('[m]\nsource = "hf://o/r/m-00001-of-00003.gguf"\nsha256 = ["' + SHA + '", "' + SHA + '"]\n', "m.sha256", "2 checksum(s) but the source has 3"),
    ('[m]\nsource = "hf://o/r/m-00001-of-00002.gguf"\nsha256 = "' + SHA + '"\n', "m.sha256", "list of 2"),
    ('[m]\nsource = "hf://o/r/m.gguf"\nsha256 = "ABC"\n', "m.sha256", "not a sha256"),
    ('[m]\nsource = "hf://o/r/m.gguf"\ngpu_layers = "some"\n', "m.gpu_layers", ""),
    ('m = 3\n', "m", "must be a table"),
    # wrong TOML types are refused, not coerced (pydantic's lax mode would take these)
    ('[m]\nsource = "hf://o/r/m.gguf"\npinned = "yes"\n', "m.pinned", "boolean"),
    ('[m]\nsource = "hf://o/r/m.gguf"\ncontext = "4096"\n', "m.context", "integer"),
    ('[m]\nsource = "hf://o/r/m.gguf"\nparallel = 2.0\n', "m.parallel", "integer"),
    ('[m]\nsource = \n', "", "invalid TOML"),
    # an unquoted dotted id nests tables: the error says how to quote it
    ('[qwen2.5-7b]\nsource = "hf://o/r/m.gguf"\n', "qwen2", """for the id 'qwen2.5-7b' quote it, ["qwen2.5-7b"]"""),
    ('[m]\nsource = "hf://o/r/m.gguf"\nmax_tokens = 0\n', "m.max_tokens", "greater than or equal to 1"),
    ('[m]\nsource = "hf://o/r/m.gguf"\nstop = "x"\n', "m.stop", "list"),
    ('[m]\nsource = "hf://o/r/m.gguf"\nmmproj = "p.gguf"\n', "m.mmproj", "hf://"),
    # sampling defaults: ranges and types
    ('[m]\nsource = "hf://o/r/m.gguf"\ntemperature = 3\n', "m.temperature", "2"),
    ('[m]\nsource = "hf://o/r/m.gguf"\ntop_k = "40"\n', "m.top_k", "integer"),
    ('[m]\nsource = "hf://o/r/m.gguf"\ntop_k = -1\n', "m.top_k", "0"),
    ('[m]\nsource = "hf://o/r/m.gguf"\nmin_p = 1.5\n', "m.min_p", "1"),
    ('[m]\nsource = "hf://o/r/m.gguf"\ntop_p = 0\n', "m.top_p", "0"),
    ('[m]\nsource = "hf://o/r/m.gguf"\nrepeat_penalty = 0\n', "m.repeat_penalty", "0"),
    ('[m]\nsource = "hf://o/r/m.gguf"\nbackend_sampling = "gpu"\n', "m.backend_sampling", ""),
    ('[m]\nsource = "hf://o/r/m.gguf"\nreasoning = "hidden"\n', "m.reasoning", "'separate' or 'inline'"),
]


@pytest.mark.parametrize("text,key,problem", BAD_MODELS)
def test_bad_models_toml_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str, problem: str
) -> None:
    bad = write(tmp_path / "bad.toml", text)
    code, err = run_ls(capsys, "--models", str(bad))
    assert code == 2
    assert err.count("\n") == 1, err
    assert err.startswith(f"appliance: error: {bad}: ")
    if key:
        assert f": {key}: " in err
    assert problem in err


BAD_CONFIG = [
    ('[server]\nport = "eighty"\n', "server.port", "integer"),
    ('[server]\nport = 70000\n', "server.port", "65535"),
    ('[server]\nhostname = "x"\n', "server.hostname", "unknown key"),
    ('[server]\nmax_body_bytes = "8 bananas"\n', "server.max_body_bytes", "invalid size"),
    ('[server]\ndrain_timeout = "a while"\n', "server.drain_timeout", "invalid duration"),
    ('[memory]\nreserve = "-1GiB"\n', "memory.reserve", "invalid size"),
    ('[memory]\nbudget = "lots"\n', "memory.budget", ""),
    ('[queue]\nswap_after = "3m"\n', "queue", "swap_after must be shorter than max_wait"),
    ('[server]\ntls_cert = "/c.pem"\n', "server", "together"),
    ('[nope]\nx = 1\n', "nope", "unknown key"),
    ('[server]\nport = 8000.0\n', "server.port", "integer"),
    ('[server]\nport = "8000"\n', "server.port", "integer"),
    ('[server]\nmetrics_public = "yes"\n', "server.metrics_public", "boolean"),
    ('[store]\nverify_on_load = 1\n', "store.verify_on_load", "boolean"),
]


@pytest.mark.parametrize("text,key,problem", BAD_CONFIG)
def test_bad_appliance_toml_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str, problem: str
) -> None:
    bad = write(tmp_path / "conf" / "appliance.toml", text)
    models = write(tmp_path / "models.toml", GOOD)
    code, err = run_ls(capsys, "--config", str(bad), "--models", str(models))
    assert code == 2
    assert err.count("\n") == 1, err
    assert f"appliance: error: {bad}: {key}: " in err
    assert problem in err


def test_missing_explicit_file_names_origin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_ls(capsys, "--models", str(tmp_path / "nope.toml"))
    assert code == 2 and "file not found (given by command line)" in err


def test_config_error_through_real_process(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.toml", '[m]\nsource = "hf://o/r/m.gguf"\nparallel = 0\n')
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    p = subprocess.run(
        [sys.executable, "-m", "appliance", "ls", "--models", str(bad)], capture_output=True, text=True, env=env
    )
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [p.stderr.strip()]
    assert f"{bad}: m.parallel: " in p.stderr


def test_env_override_error_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_PORT", "http")
    with pytest.raises(Exception) as e:
        load_settings()
    assert "environment APPLIANCE_PORT: server.port" in str(e.value)


def test_env_port_is_converted_to_an_int(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_PORT", "8123")
    assert load_settings().config.server.port == 8123
    monkeypatch.setenv("APPLIANCE_PORT", "80.5")
    with pytest.raises(Exception) as e:
        load_settings()
    assert "environment APPLIANCE_PORT: server.port" in str(e.value) and "80.5" in str(e.value)


# --- search order --------------------------------------------------------------------------


def _places(tmp_path: Path, home: Path) -> dict[str, Path]:
    return {
        "flag": tmp_path / "flag" / "models.toml",
        "env": tmp_path / "env" / "models.toml",
        "cwd": tmp_path / "models.toml",
        "etc": tmp_path / "etc-appliance" / "models.toml",
        "home": home / ".config" / "appliance" / "models.toml",
    }


def test_search_order_flag_env_cwd_etc_home(
    tmp_path: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    places = _places(tmp_path, isolated_env)
    for name, p in places.items():
        write(p, f'[{name}]\nsource = "hf://o/r/{name}.gguf"\n')
    monkeypatch.setenv("APPLIANCE_MODELS", str(places["env"]))
    order = list(places)
    for i, name in enumerate(order):
        flag = str(places["flag"]) if name == "flag" else None
        s = load_settings(models=flag)
        assert list(s.catalog.models) == [name]
        # drop this place and expect the next one
        if name == "flag":
            continue
        if name == "env":
            monkeypatch.delenv("APPLIANCE_MODELS")
        else:
            places[name].unlink()
    s = load_settings()
    assert s.catalog.models == {} and not s.catalog.exists
    assert s.catalog.path == isolated_env / ".config" / "appliance" / "models.toml"


def test_appliance_toml_search_and_env_overrides(
    tmp_path: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "etc-appliance" / "appliance.toml", '[server]\nport = 9000\nhost = "0.0.0.0"\n')
    s = load_settings()
    assert s.config_path == tmp_path / "etc-appliance" / "appliance.toml"
    assert (s.config.server.port, s.config.server.host) == (9000, "0.0.0.0")
    assert s.keys_path == tmp_path / "etc-appliance" / "keys.toml"
    monkeypatch.setenv("APPLIANCE_PORT", "9100")
    monkeypatch.setenv("APPLIANCE_HOST", "10.0.0.2")
    monkeypatch.setenv("APPLIANCE_STORE", "~/models")
    s = load_settings()
    assert (s.config.server.port, s.config.server.host) == (9100, "10.0.0.2")
    assert s.config.store.path == isolated_env / "models"
    assert s.env_overrides == {"server.host": "APPLIANCE_HOST", "server.port": "APPLIANCE_PORT", "store.path": "APPLIANCE_STORE"}


def test_defaults_without_any_file(isolated_env: Path) -> None:
    s = load_settings()
    assert s.config_path is None
    assert s.config.store.path == isolated_env / ".local" / "share" / "appliance"
    assert s.config.server.max_body_bytes == 8 * 1024**2
    assert s.config.queue.max_wait == 120.0


def test_split_source_with_shard_checksums_is_valid(tmp_path: Path) -> None:
    p = write(
        tmp_path / "m.toml",
        '[m]\nsource = "hf://o/r/m-00001-of-00002.gguf"\nsha256 = ["' + SHA + '", "' + "b" * 64 + '"]\n',
    )
    m = load_settings(models=p).catalog.models["m"]
    assert m.shard_sources == ["hf://o/r/m-00001-of-00002.gguf", "hf://o/r/m-00002-of-00002.gguf"]
    assert m.pinned_sha256 == [SHA, "b" * 64]


def test_bare_appliance_prints_usage_and_commands(capsys: pytest.CaptureFixture[str]) -> None:
    from appliance.cli import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: appliance")
    for command in ("serve", "pull", "run", "ps", "stop", "show", "rm", "import"):
        assert f"\n    {command} " in out, command


def test_sampling_defaults_from_models_toml(tmp_path: Path) -> None:
    from appliance.config import load_catalog

    path = write(tmp_path / "models.toml", '[m]\nsource = "hf://o/r/m.gguf"\ntemperature = 1\ntop_k = 20\n'
                                          'min_p = 0.1\nbackend_sampling = false\n[n]\nsource = "hf://o/r/n.gguf"\n')
    cat = load_catalog(path)
    m, n = cat.models["m"], cat.models["n"]
    assert (m.temperature, m.top_k, m.min_p, m.backend_sampling) == (1.0, 20, 0.1, False)  # an integer is a float
    assert (n.temperature, n.top_k, n.top_p, n.min_p, n.repeat_penalty, n.backend_sampling) == (
        1.0, 40, 1.0, 0.05, 1.0, "auto")  # OpenAI's where it has one, llama-server's elsewhere
