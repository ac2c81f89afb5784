"""The `appliance` command: one module per command group, errors mapped to exit codes here.

Exit codes (SPEC.md): 0 success, 1 failure (e.g. checksum mismatch), 2 usage or config error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from ..errors import ApplianceError

# Command-group modules, imported when the parser is built (after `preload_llama`).
GROUPS = ["serve", "models", "run", "live", "show", "bundle", "keys", "doctor", "bench", "worker"]


def preload_llama(argv: Sequence[str]) -> None:
    """Load llama.cpp's shared libraries before anything imports numpy.

    On an H200 host (CUDA build, numpy 2.5 with its bundled OpenBLAS) the first model load
    segfaulted inside llama_model_load_from_file whenever numpy had been imported first; with
    llama.cpp loaded first it ran. The command modules import numpy (gguf), so this runs
    before they are imported, and only for `serve` and `run`, which load models.
    """
    if "serve" in argv or "worker" in argv or (argv and argv[0] == "run"):
        import llama_cpp  # noqa: F401


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
    for name in GROUPS:
        importlib.import_module(f"{__name__}.{name}").register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    preload_llama(argv)
    parser = build_parser()
    if not argv:  # a newcomer's first try: what there is to do, not "arguments are required"
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ApplianceError as e:
        sys.stderr.write(f"appliance: error: {e.message}\n")
        return e.exit_code
    except OSError as e:  # an unforeseen file problem: one line, not a traceback
        where = f": {e.filename}" if e.filename is not None else ""
        sys.stderr.write(f"appliance: error: {e.strerror or e}{where}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("appliance: interrupted\n")
        return 130
