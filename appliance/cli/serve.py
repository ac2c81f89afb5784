"""`appliance serve`: run the daemon in the foreground."""

from __future__ import annotations

import argparse

from ..config import load_settings


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="run the daemon in the foreground")
    p.add_argument("--host", help="listen address (overrides server.host)")
    p.add_argument("--port", type=int, help="listen port (overrides server.port)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, args.models)
    print(f"config ok: {len(settings.catalog.models)} model(s) in catalog")
    return 0
