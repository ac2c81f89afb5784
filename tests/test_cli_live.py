"""`appliance run`, `ps`, `stop` and `show` on real llama.cpp (tiny random-weight GGUFs): against
a real `appliance serve` process (reached through its admin socket) and alone (run starts the
model in this process). The CLI itself runs in this process (tests/cli_support.py)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from appliance.cli.daemonlink import Link, local_url
from appliance.cli.chat_repl import Conversation, read_message, repl
from cli_support import Ran, run_cli
from test_api_support import write_config

ROOT = Path(__file__).resolve().parents[1]
NO_EOS = '{"2": -100}'


def cli(stdin: str, *args: str) -> Ran:
    """`appliance ARGS` with `stdin` as its (piped) standard input."""
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        return run_cli(*args)
    finally:
        sys.stdin = old


@pytest.fixture
def configured(tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    write_config(tmp_path, {
        "tiny": {"source": f"file://{tiny_models['a']}", "context": 128, "parallel": 2, "keep_alive": "5m",
                 "aliases": ["t"]},
        "thinker": {"source": f"file://{tiny_models['b']}", "context": 128, "parallel": 1,
                    "chat_template": "{% for m in messages %}<think>{{ m.content }}</think>{% endfor %}"
                                     "{% if tools %}<tool_call>{% endif %}", "system": "Think first.", "max_tokens": 4},
    })
    monkeypatch.setenv("APPLIANCE_CONFIG", str(tmp_path / "appliance.toml"))
    monkeypatch.setenv("APPLIANCE_MODELS", str(tmp_path / "models.toml"))
    return tmp_path


@pytest.fixture
def daemon(configured: Path) -> Iterator[str]:
    """A real `appliance serve` on the configured catalog; its URL."""
    with _serving() as url:
        yield url


@contextlib.contextmanager
def _serving() -> Iterator[str]:
    p = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--port", "0"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert "serving on" in line, line
        yield line.split()[-1]
    finally:
        p.terminate()
        p.wait(timeout=60)


def test_a_daemon_with_keys_over_http(configured: Path) -> None:
    """--url and --key: ps and stop through /admin/models, run through /v1; no key: one clear line."""
    from appliance.auth import create_key

    admin, _ = create_key(configured / "keys.toml", "admin", scope="admin")
    user, _ = create_key(configured / "keys.toml", "user", scope="inference")
    assert cli("", "pull", "tiny").returncode == 0
    with _serving() as url:
        bare = cli("", "run", "tiny", "hi", "--max-tokens", "2")  # found over the admin socket, no key
        assert bare.returncode == 1 and "give an API key with --key or APPLIANCE_API_KEY" in bare.stderr
        assert len(bare.stderr.strip().splitlines()) == 1 and bare.stdout == ""
        assert cli("", "run", "tiny", "hi", "--max-tokens", "2", "--key", user).returncode == 0
        ps = cli("", "ps", "--url", url, "--key", admin)
        assert ps.returncode == 0 and ps.stdout.splitlines()[1].split()[:2] == ["tiny", "loaded"], ps.stdout
        refused = cli("", "ps", "--url", url, "--key", user)
        assert refused.returncode == 1 and "scope" in refused.stderr, refused.stderr
        assert cli("", "stop", "tiny", "--url", url, "--key", admin).stdout == "tiny: unloaded\n"
    gone = cli("", "ps", "--url", url, "--key", admin)
    assert gone.returncode == 1 and f"cannot reach {url}" in gone.stderr


def test_a_daemon_on_every_address_is_reached_over_loopback() -> None:
    assert local_url("http://0.0.0.0:8000") == "http://127.0.0.1:8000"
    assert local_url("https://[::]:8443") == "https://[::1]:8443"
    assert local_url("http://10.0.0.5:8000") == "http://10.0.0.5:8000"


def test_read_message_single_and_multi_line() -> None:
    lines = iter(['"""first', "second", 'third"""', "plain"])
    read = lambda prompt: next(lines)  # noqa: E731
    assert read_message(read) == "first\nsecond\nthird"
    assert read_message(read) == "plain"
    assert read_message(lambda p: (_ for _ in ()).throw(EOFError)) is None


def test_run_ps_stop_against_a_running_daemon(daemon: str) -> None:
    ps = cli("", "ps")
    assert ps.returncode == 0 and ps.stdout.splitlines() == ["ID  STATE  MEMORY  DEVICE  SLOTS  QUEUE  UNLOADS IN"]
    r = cli("", "run", "t", "Say hello", "--max-tokens", "3", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n")
    ps = cli("", "ps")
    rows = ps.stdout.splitlines()
    assert len(rows) == 2 and rows[1].split()[:2] == ["tiny", "loaded"], ps.stdout
    queue, left = rows[1].split()[-2:]
    assert queue == "0" and "0/2" in rows[1] and re.fullmatch(r"[1-5]m", left), rows[1]  # idle, of keep_alive 5m
    stop = cli("", "stop", "t")
    assert (stop.returncode, stop.stdout) == (0, "tiny: unloaded\n")
    assert len(cli("", "ps").stdout.splitlines()) == 1
    again = cli("", "stop", "tiny")
    assert again.returncode == 1 and "not loaded" in again.stderr
    # piped stdin is the prompt
    piped = cli("Summarise this text.\n", "run", "tiny", "--max-tokens", "2")
    assert piped.returncode == 0, piped.stderr


def test_interactive_chat_commands(daemon: str) -> None:
    script = "/set temperature 0\n/set max_tokens 3\n/system be brief\nhello\n\"\"\"\nline one\nline two\n\"\"\"\n" \
             "/set top_k 1\n/set bogus 1\n/set max_tokens lots\n/bye\nnever read\n"
    r = cli(script, "run", "tiny", "-i")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for said in ["temperature = 0.0", "max_tokens = 3", "system prompt set; conversation cleared",
                 "top_k = 1", "unknown option 'bogus'", "max_tokens: not a number: 'lots'"]:
        assert said in out, (said, out)


def test_run_alone_pulls_and_runs_the_model_in_process(configured: Path) -> None:
    assert cli("", "ps").returncode == 1  # no daemon: ps says so
    r = cli("", "run", "thinker", "hi")
    assert r.returncode == 0, r.stderr
    assert "thinker: not in the store; pulling it" in r.stderr
    assert r.stdout.endswith("\n")
    assert (configured / "store" / "manifests" / "thinker.json").exists()
    again = cli("", "run", "tiny", "--max-tokens", "2")
    assert again.returncode == 2 and "nothing to ask" in again.stderr


def test_show_reads_the_header_template_and_files(configured: Path) -> None:
    before = cli("", "show", "thinker")
    assert before.returncode == 0 and "not pulled: run `appliance pull thinker`" in before.stdout
    assert cli("", "pull", "thinker").returncode == 0
    s = cli("", "show", "thinker")
    assert s.returncode == 0, s.stderr
    out = s.stdout
    for said in ["architecture    llama", "quantization    F32", "trained: ", "tool calls      hermes (native)",
                 "reasoning       <think>…</think> (reasoning = 'separate')", 'default system  "Think first."', "chat template (from models.toml)"]:
        assert said in out, (said, out)
    assert "sha256 " in out and "tiny-b.gguf" in out
    j = cli("", "show", "tiny", "--json")
    assert j.returncode == 0 and '"state": "missing"' in j.stdout


class InterruptOnce(io.StringIO):
    """Terminal output where the user presses Ctrl-C while the answer's first piece is shown."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    def write(self, text: str) -> int:
        if self.armed and text.strip() and not text.strip().startswith(("type a", "(")):
            self.armed = False
            raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_stops_an_answer_or_a_prompt_not_the_chat(daemon: str) -> None:
    assert cli("", "pull", "tiny").returncode == 0
    convo = Conversation("tiny", options={"max_tokens": 8, "logit_bias": {"2": -100}})
    said: list[object] = [KeyboardInterrupt, "hello", "again"]

    def read_line(prompt: str) -> str:
        if not said:
            raise EOFError
        nxt = said.pop(0)
        if nxt is KeyboardInterrupt:
            raise KeyboardInterrupt
        return str(nxt)

    out = InterruptOnce()
    assert repl(Link(daemon, None), convo, read_line, out) == 0
    text = out.getvalue()
    assert "(Ctrl-D or /bye to leave)" in text and "(stopped)" in text
    # the answer stopped before anything was shown is not in the history; the next one is, whole
    assert [t["content"] for t in convo.turns if t["role"] == "user"] == ["again"]
    assert convo.turns[-1]["role"] == "assistant" and convo.turns[-1]["content"]  # the second answer is whole


def test_until_unload_reads_keep_alive_and_the_idle_time(tmp_path: Path) -> None:
    from appliance.cli.live import until_unload
    from appliance.config import Catalog, ModelConfig

    cat = Catalog({"m": ModelConfig(source="file:///m.gguf", keep_alive="5m"),
                   "f": ModelConfig(source="file:///f.gguf", keep_alive="forever")}, tmp_path / "models.toml")
    assert until_unload({"id": "m", "idle_seconds": 270.0}, cat) == "30s"
    assert until_unload({"id": "m", "idle_seconds": 0.0}, cat) == "5m"
    assert until_unload({"id": "m", "idle_seconds": 999.0}, cat) == "0s"
    assert until_unload({"id": "m", "slots_busy": 1}, cat) == "busy"
    assert until_unload({"id": "f"}, cat) == "forever"
    assert until_unload({"id": "m", "pinned": True}, cat) == "forever (pinned)"
    assert until_unload({"id": "elsewhere"}, cat) == "?"


@pytest.mark.parametrize("template,tools,reasoning", [
    ("Qwen-Qwen3-0.6B", "hermes (native)", "<think>…</think>"),
    ("openai-gpt-oss-120b", "gpt-oss (native)", "harmony analysis channel"),
    ("meta-llama-Llama-3.1-8B-Instruct", "llama3 (native)", None),
    ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", "deepseek-r1 (native)", "<think>…</think>"),
    ("google-gemma-2-2b-it", "generic", None),
])
def test_show_reads_tool_format_and_reasoning_as_the_daemon_does(template: str, tools: str, reasoning: str | None) -> None:
    from appliance.cli.show import template_facts

    got_tools, got_reasoning = template_facts((ROOT / "tests" / "data" / "templates" / f"{template}.jinja").read_text(), True)
    assert got_tools.startswith(tools) and got_reasoning == reasoning
