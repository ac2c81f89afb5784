"""The `appliance` command: one module per command group, errors mapped to exit codes here.

Exit codes (SPEC.md): 0 success, 1 failure (e.g. checksum mismatch), 2 usage or config error.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..errors import ApplianceError
from . import bench as bench_cmd
from . import bundle as bundle_cmd
from . import doctor as doctor_cmd
from . import keys as keys_cmd
from . import models as models_cmd
from . import serve as serve_cmd

GROUPS = [serve_cmd, models_cmd, bundle_cmd, keys_cmd, doctor_cmd, bench_cmd]


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line on stderr and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def common_options() -> argparse.ArgumentParser:
    """Options every command takes: which config files to use."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", metavar="FILE", help="appliance.toml (default: search, see README)")
    p.add_argument("--models", metavar="FILE", help="models.toml (default: search, see README)")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="appliance", description="Single-node LLM inference appliance.")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    common = common_options()
    for group in GROUPS:
        group.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ApplianceError as e:
        sys.stderr.write(f"appliance: error: {e.message}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("appliance: interrupted\n")
        return 130
