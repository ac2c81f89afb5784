"""`appliance run MODEL [PROMPT]`: chat with a model from the terminal, as `ollama run` does.

With a prompt (or text piped on stdin) it answers once and exits; on a terminal it is an
interactive chat: streamed answers, history (readline), multi-line input between triple
quotes, and /bye, /system, /set, /clear. It talks to the running daemon (admin socket, or
--url and --key); when none runs it starts one inside this process on a loopback port with a
one-time key, so the same code path serves both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from ..config import ModelConfig, Settings, load_settings
from ..errors import ApplianceError, UsageError
from . import daemonlink
from .models import _resolve, _store

HELP = """commands:
  /bye                      leave
  /system TEXT              set the system prompt (and start over)
  /set temperature|top_p|max_tokens|seed VALUE    a sampling option ("/set temperature" alone: unset)
  /clear                    forget the conversation
  /?                        this help
  \"\"\"                       begin or end a multi-line message"""
OPTIONS: dict[str, Callable[[str], Any]] = {"temperature": float, "top_p": float, "max_tokens": int, "seed": int}


@dataclass
class Conversation:
    """The messages so far and the options sent with each request."""

    model: str
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    turns: list[dict[str, str]] = field(default_factory=list)

    def request(self, text: str) -> dict[str, Any]:
        msgs = ([{"role": "system", "content": self.system}] if self.system else []) + self.turns
        return {"model": self.model, "messages": [*msgs, {"role": "user", "content": text}], **self.options}


def answer(link: daemonlink.Link, convo: Conversation, text: str, out: TextIO) -> str:
    """Stream one reply to `out`; the user turn and the reply join the conversation. Reasoning
    (`reasoning_content`) is shown, dimmed on a terminal, but not kept in the history."""
    reply: list[str] = []
    dim, plain = ("\033[2m", "\033[0m") if out.isatty() else ("", "")
    thinking = shown = done = False
    try:
        for event in link.stream("/v1/chat/completions", convo.request(text)):
            for choice in event.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("reasoning_content"):
                    out.write(("" if thinking else dim) + delta["reasoning_content"])
                    thinking = shown = True
                if delta.get("content"):
                    out.write((plain + "\n\n" if thinking else "") + delta["content"])
                    thinking, shown = False, True
                    reply.append(delta["content"])
                out.flush()
        done = True
    finally:  # on Ctrl-C or an error too, what was shown is part of the conversation
        if done or shown:
            _end_answer(out, thinking, plain)
            convo.turns += [{"role": "user", "content": text}, {"role": "assistant", "content": "".join(reply)}]
    return "".join(reply)


def _end_answer(out: TextIO, thinking: bool, plain: str) -> None:
    out.write((plain if thinking else "") + "\n")
    out.flush()


def command(convo: Conversation, line: str, out: TextIO) -> bool:
    """Handle a /command; False means leave."""
    word, _, rest = line.partition(" ")
    rest = rest.strip()
    if word in ("/bye", "/exit"):
        return False
    if word == "/system":
        convo.system = rest or None
        convo.turns.clear()
        out.write(f"system prompt {'set' if rest else 'cleared'}; conversation cleared\n")
    elif word == "/clear":
        convo.turns.clear()
        out.write("conversation cleared\n")
    elif word == "/set":
        name, _, value = rest.partition(" ")
        if name not in OPTIONS:
            out.write(f"unknown option {name!r}; one of: {', '.join(OPTIONS)}\n")
        elif not value.strip():
            convo.options.pop(name, None)
            out.write(f"{name} unset\n")
        else:
            try:
                convo.options[name] = OPTIONS[name](value.strip())
                out.write(f"{name} = {convo.options[name]}\n")
            except ValueError:
                out.write(f"{name}: not a number: {value.strip()!r}\n")
    else:
        out.write(HELP + "\n")
    return True


def read_message(read_line: Callable[[str], str]) -> str | None:
    """One message: a line, or the lines between two triple-quote lines. None at end of input."""
    try:
        line = read_line(">>> ")
    except EOFError:
        return None
    if not line.lstrip().startswith('"""'):
        return line
    parts = [line.lstrip()[3:]]
    while True:
        try:
            more = read_line("... ")
        except EOFError:
            return "\n".join(parts)
        if more.rstrip().endswith('"""'):
            parts.append(more.rstrip()[:-3])
            return "\n".join(parts).strip("\n")
        parts.append(more)


def repl(link: daemonlink.Link, convo: Conversation, read_line: Callable[[str], str], out: TextIO) -> int:
    """The interactive chat until /bye or end of input. A failed request is shown, not fatal."""
    out.write('type a message; /? for help, """ for several lines, /bye or Ctrl-D to leave\n')
    while True:
        try:
            text = read_message(read_line)
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh prompt, as in a shell
            out.write("\n(Ctrl-D or /bye to leave)\n")
            continue
        if text is None:
            return 0
        if not text.strip():
            continue
        if text.startswith("/"):
            if not command(convo, text.strip(), out):
                return 0
            continue
        try:
            answer(link, convo, text, out)
        except KeyboardInterrupt:  # Ctrl-C while it answers: stop this answer, keep the chat
            out.write("(stopped)\n")
        except ApplianceError as e:
            out.write(f"error: {e.message}\n")


def ensure_pulled(settings: Settings, mid: str, cfg: ModelConfig) -> None:
    """Pull the model into this machine's store first when it is not there (as `ollama run`)."""
    from ..store import pull_model

    store = _store(settings)
    if store.state(mid, cfg).paths is None:
        print(f"{mid}: not in the store; pulling it", file=sys.stderr)
        pull_model(store, mid, cfg, progress=True, echo=lambda s: print(s, file=sys.stderr))


@contextlib.contextmanager
def local_daemon(settings: Settings, mid: str, cfg: ModelConfig) -> Iterator[daemonlink.Link]:
    """A daemon inside this process, listening on a loopback port with a key only we know."""
    from ..auth import create_key
    from ..daemon import Daemon
    store = _store(settings)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="appliance-run", daemon=True)
    thread.start()
    with tempfile.TemporaryDirectory(prefix="appliance-run-") as tmp:
        keys = Path(tmp) / "keys.toml"
        token, _ = create_key(keys, "run", scope="inference")
        own = dataclasses.replace(settings, keys_path=keys)

        async def start() -> Daemon:
            d = Daemon(own, host="127.0.0.1", port=0, store=store)
            await d.start()
            return d

        daemon = asyncio.run_coroutine_threadsafe(start(), loop).result()
        try:
            yield daemonlink.Link(daemon.url, token)
        finally:
            asyncio.run_coroutine_threadsafe(daemon.stop(), loop).result()
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()


def _readline_input() -> Callable[[str], str]:
    """input() with line editing and a history kept across sessions, where readline exists."""
    try:
        import readline
    except ImportError:
        return input
    import atexit
    import os

    hist = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "appliance" / "run_history"
    with contextlib.suppress(OSError):
        readline.read_history_file(hist)

    def save() -> None:
        with contextlib.suppress(OSError):
            hist.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(hist)

    atexit.register(save)
    return input


def _target(name: str, settings: Settings, link: daemonlink.Link | None) -> tuple[str, ModelConfig | None]:
    """The model id and our catalog's entry for it. Alone we need the entry; a daemon (remote
    ones above all) may serve ids our catalog lacks, and says so itself when it does not."""
    if link is None:
        (mid, cfg), = _resolve(settings.catalog, [name])
        return mid, cfg
    hit = settings.catalog.resolve(name)
    return hit if hit else (name, None)


def cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings(config=args.config, models=args.models)
    link = daemonlink.connect(args, settings)
    mid, cfg = _target(args.model, settings, link)
    convo = Conversation(mid, system=args.system)
    for name in OPTIONS:
        if getattr(args, name) is not None:
            convo.options[name] = getattr(args, name)
    prompt = " ".join(args.prompt)
    piped = not sys.stdin.isatty() and not args.interactive
    if piped:
        stdin_text = sys.stdin.read()
        prompt = f"{prompt}\n\n{stdin_text}".strip() if prompt else stdin_text.strip()
        if not prompt:
            raise UsageError("nothing to ask: give a PROMPT or pipe text on stdin")
    if cfg is not None and (link is None or link.local is not None):  # this machine's store
        ensure_pulled(settings, mid, cfg)
    with contextlib.ExitStack() as stack:
        if link is None:
            assert cfg is not None
            link = stack.enter_context(local_daemon(settings, mid, cfg))
        if prompt and not args.interactive:
            answer(link, convo, prompt, sys.stdout)
            return 0
        if prompt:
            answer(link, convo, prompt, sys.stdout)
        read_line = _readline_input() if sys.stdin.isatty() else _plain_input
        return repl(link, convo, read_line, sys.stdout)


def _plain_input(prompt: str) -> str:
    """input() for a non-terminal stdin (tests, scripts driving the chat): no prompt echo."""
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[common], help="chat with a model (interactive, or one answer)",
                       description="Chat with MODEL: one answer to PROMPT (or to text piped on stdin), or an "
                       "interactive chat on a terminal. Uses the running daemon; without one, runs the model "
                       "in this process.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("prompt", nargs="*", default=[], metavar="PROMPT")
    p.add_argument("--system", help="system prompt (default: the model's `system` in models.toml)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", dest="top_p", type=float)
    p.add_argument("--max-tokens", dest="max_tokens", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("-i", "--interactive", action="store_true",
                   help="chat even when stdin is not a terminal (lines read from stdin)")
    daemonlink.add_options(p)
    p.set_defaults(func=cmd_run)
