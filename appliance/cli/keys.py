"""`appliance keys create|ls|revoke`: manage API keys in the keys file (see docs/api.md)."""

from __future__ import annotations

import argparse
import sys

from ..auth import SCOPES, create_key, load_keys, revoke_key
from ..config import load_settings
from ..errors import UsageError


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("keys", help="manage API keys")
    ks = p.add_subparsers(dest="keys_command", metavar="COMMAND", parser_class=type(p))
    ks.required = True

    # Not `common`: SPEC's `--models a,b` here is the key's model list, not models.toml.
    c = ks.add_parser("create", help="create a key and print its token once")
    c.add_argument("name")
    c.add_argument("--config", metavar="FILE", help="appliance.toml (default: search, see README)")
    c.add_argument("--scope", choices=SCOPES, default="inference", help="inference (/v1) or admin (everything)")
    c.add_argument("--models", dest="models_list", default="", metavar="A,B",
                   help="models the key may use (default: all)")
    c.add_argument("--rpm", type=int, default=0, metavar="N", help="requests per minute (default: unlimited)")
    c.set_defaults(func=create)

    ls = ks.add_parser("ls", parents=[common], help="list keys (never their tokens)")
    ls.set_defaults(func=list_keys)

    r = ks.add_parser("revoke", parents=[common], help="delete a key; it fails from its next request on")
    r.add_argument("name")
    r.set_defaults(func=revoke)


def create(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    models = [m.strip() for m in args.models_list.split(",") if m.strip()] if args.models_list else []
    if args.rpm < 0:
        raise UsageError("--rpm must be >= 0 (0 = unlimited)")
    for m in models:  # a warning, not an error: the catalog may gain the model later
        if settings.catalog.resolve(m) is None:
            sys.stderr.write(f"appliance: warning: {m!r} is not (yet) a model in {settings.catalog.path}\n")
    token, key = create_key(settings.keys_path, args.name, scope=args.scope, models=models, rpm=args.rpm)
    print(token)
    sys.stderr.write(
        f"created key {key.name!r} ({args.scope}) in {settings.keys_path}; "
        "the token above is shown only now: store it safely\n"
    )
    return 0


def list_keys(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, args.models)
    keys = load_keys(settings.keys_path)
    if not keys:
        print(f"no keys in {settings.keys_path}")
        return 0
    rows = [("NAME", "SCOPES", "MODELS", "RPM", "CREATED")]
    for k in keys.values():
        rows.append((k.name, ",".join(k.scopes), ",".join(k.models) or "*", str(k.rpm or "-"), k.created))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def revoke(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, args.models)
    revoke_key(settings.keys_path, args.name)
    print(f"revoked key {args.name!r}")
    return 0
