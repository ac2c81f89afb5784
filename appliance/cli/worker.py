"""`appliance worker`: lend this machine's GPU (or RAM) to a head node over llama.cpp's RPC.

The RPC protocol has no authentication: whoever reaches the port can run code-sized graphs
on the device and read its memory. So the worker binds loopback unless told otherwise, and
a wildcard address (every interface) needs `--allow-public`; docs/cluster.md says how to
fence a LAN address (firewall, a private link).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys

from ..errors import UsageError
from ..hardware.rpc import DEFAULT_PORT

WILDCARDS = {"", "*", "0.0.0.0", "::", "[::]"}  # "::" and "[::]": refused either way (IPv4 only)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("worker", help="serve this machine's devices to a head node (llama.cpp RPC)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--device", action="append", default=[], metavar="NAME",
                   help="ggml device to serve, e.g. CUDA0 (repeat or comma-separate; "
                        "default: every GPU, else the CPU)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (CPU device)")
    p.add_argument("--allow-public", action="store_true",
                   help="allow a wildcard address (RPC has no authentication: fence the port)")
    p.set_defaults(func=run)


def check_host(host: str, allow_public: bool) -> None:
    """Refuse a wildcard bind unless asked for explicitly (UsageError: exit 2)."""
    if host.strip() in WILDCARDS and not allow_public:
        raise UsageError(f"refusing to listen on every interface ({host or 'empty'}): RPC has no "
                         "authentication; bind a private address or pass --allow-public")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def endpoint(host: str, port: int) -> str:
    """llama.cpp's `host:port`; it splits at the first colon, so no IPv6 literal."""
    if ":" in host:
        raise UsageError(f"llama.cpp's RPC server takes no IPv6 address ({host}); use an IPv4 address or a hostname")
    return f"{host}:{port}"


def run(args: argparse.Namespace) -> int:
    check_host(args.host, args.allow_public)
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1-65535, got {args.port}")
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    ep = endpoint(args.host, args.port)
    from ..hardware import rpc

    devices = [d for arg in args.device for d in arg.split(",") if d]
    if not is_loopback(args.host):
        sys.stderr.write(f"appliance: warning: RPC worker reachable beyond this machine on {ep}; "
                         "it has no authentication: allow only the head node to reach it\n")
    sys.stderr.write(f"appliance: worker starting on {ep}\n")
    sys.stderr.flush()
    # The server blocks in C: let SIGINT end the process like SIGTERM does.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    rpc.serve(ep, devices, args.threads)
    return 1
