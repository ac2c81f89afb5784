"""The terminal chat of `appliance run`: a conversation streamed from a daemon's
/v1/chat/completions, the interactive loop (multi-line input, /commands, Ctrl-C stops an
answer, not the chat) and line input with readline history."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from ..errors import ApplianceError
from .daemonlink import Link

HELP = """commands:
  /bye                      leave
  /system TEXT              set the system prompt (and start over)
  /set OPTION VALUE         temperature, top_p, top_k, min_p, repeat_penalty, max_tokens, seed
                            ("/set temperature" alone: back to the model's default)
  /clear                    forget the conversation
  /?                        this help
  \"\"\"                       begin or end a multi-line message"""
# What /set (and run's flags) may change: request fields of /v1/chat/completions.
OPTIONS: dict[str, Callable[[str], Any]] = {
    "temperature": float, "top_p": float, "top_k": int, "min_p": float, "repeat_penalty": float,
    "max_tokens": int, "seed": int,
}


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


def answer(link: Link, convo: Conversation, text: str, out: TextIO) -> str:
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


def repl(link: Link, convo: Conversation, read_line: Callable[[str], str], out: TextIO) -> int:
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


def readline_input() -> Callable[[str], str]:
    """input() with line editing and a history kept across sessions, where readline exists."""
    try:
        import readline
    except ImportError:
        return input
    import atexit

    hist = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "appliance" / "run_history"
    with contextlib.suppress(OSError):
        readline.read_history_file(hist)

    def save() -> None:
        with contextlib.suppress(OSError):
            hist.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(hist)

    atexit.register(save)
    return input


def plain_input(prompt: str) -> str:
    """input() for a non-terminal stdin (tests, scripts driving the chat): no prompt echo."""
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")
