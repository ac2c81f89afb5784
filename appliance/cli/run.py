"""`appliance run MODEL [PROMPT]`: chat with a model from the terminal, as `ollama run` does.

With a prompt (or text piped on stdin) it answers once and exits; on a terminal it is an
interactive chat (chat_repl.py). It talks to the running daemon (admin socket, or --url and
--key); when none runs it starts one inside this process (inprocess.py), so the same code path
serves both. A catalog model missing from this machine's store is pulled first.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from ..config import ModelConfig, Settings, load_settings
from ..errors import UsageError
from . import daemonlink
from .chat_repl import OPTIONS, Conversation, answer, plain_input, readline_input, repl
from .inprocess import local_daemon
from .models import _resolve, _store


def ensure_pulled(settings: Settings, mid: str, cfg: ModelConfig) -> None:
    """Pull the model into this machine's store first when it is not there (as `ollama run`)."""
    from ..store import pull_model

    store = _store(settings)
    if store.state(mid, cfg).paths is None:
        print(f"{mid}: not in the store; pulling it", file=sys.stderr)
        pull_model(store, mid, cfg, progress=True, echo=lambda s: print(s, file=sys.stderr))


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
            link = stack.enter_context(local_daemon(settings, _store(settings)))
        if prompt and not args.interactive:
            answer(link, convo, prompt, sys.stdout)
            return 0
        if prompt:
            answer(link, convo, prompt, sys.stdout)
        read_line = readline_input() if sys.stdin.isatty() else plain_input
        return repl(link, convo, read_line, sys.stdout)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[common], help="chat with a model (interactive, or one answer)",
                       description="Chat with MODEL: one answer to PROMPT (or to text piped on stdin), or an "
                       "interactive chat on a terminal. Uses the running daemon; without one, runs the model "
                       "in this process.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("prompt", nargs="*", default=[], metavar="PROMPT")
    p.add_argument("--system", help="system prompt (default: the model's `system` in models.toml)")
    for name, kind in OPTIONS.items():  # the same options as /set; unset: the model's defaults
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, metavar=kind.__name__.upper())
    p.add_argument("-i", "--interactive", action="store_true",
                   help="chat even when stdin is not a terminal (lines read from stdin)")
    daemonlink.add_options(p)
    p.set_defaults(func=cmd_run)
