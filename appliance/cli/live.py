"""`appliance ps` and `appliance stop MODEL`: what the running daemon holds in memory, and
unloading a model, through its admin socket (or --url and an admin key)."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from ..config import Catalog, Settings, load_settings
from ..errors import DaemonUnreachable
from ..units import format_size
from . import daemonlink
from .tables import format_table

RESIDENT = ("loading", "loaded", "unloading")


def _link(args: argparse.Namespace) -> tuple[daemonlink.Link, Settings]:
    settings = load_settings(config=args.config, models=args.models)
    link = daemonlink.connect(args, settings)
    if link is None:
        raise DaemonUnreachable(
            "no daemon is running (start one with `appliance serve`, or give its --url and --key)"
        )
    return link, settings


def until_unload(row: dict[str, Any], catalog: Catalog) -> str:
    """When keep_alive unloads this model: "forever", "busy" while it works, else the time left."""
    if row.get("pinned"):
        return "forever (pinned)"
    if row.get("slots_busy") or row.get("queue_depth"):
        return "busy"
    hit = catalog.resolve(str(row.get("id")))
    if hit is None:
        return "?"
    keep = hit[1].keep_alive
    if math.isinf(keep):
        return "forever"
    left = max(0.0, keep - float(row.get("idle_seconds") or 0.0))
    return f"{left:.0f}s" if left < 120 else f"{left / 60:.0f}m"


def device_cell(row: dict[str, Any]) -> str:
    """The model's device; split over several (RPC workers too), each with its charge."""
    charges = row.get("charges") or {}
    if len(charges) > 1:
        return ", ".join(f"{label} {format_size(n)}" for label, n in charges.items())
    return str(row.get("device") or "-")


def cmd_ps(args: argparse.Namespace) -> int:
    link, settings = _link(args)
    rows = [r for r in link.models() if r.get("state") in RESIDENT]
    for r in rows:
        r["until_unload"] = until_unload(r, settings.catalog)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [("ID", "STATE", "MEMORY", "DEVICE", "SLOTS", "QUEUE", "UNLOADS IN")]
    for r in rows:
        mem = r.get("memory_measured") or r.get("memory_estimated")
        table.append((
            str(r["id"]), str(r["state"]), format_size(mem) if mem else "-", device_cell(r),
            f"{r.get('slots_busy', 0)}/{r.get('slots_total', 0)}", str(r.get("queue_depth", 0)), r["until_unload"],
        ))
    print(format_table(table))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    link, settings = _link(args)
    hit = settings.catalog.resolve(args.model)
    mid = hit[0] if hit else args.model  # a remote daemon's catalog may differ from ours
    link.unload(mid)
    print(f"{mid}: unloaded")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("ps", parents=[common], help="models the running daemon holds in memory",
                       description="Loaded models: state, memory, device, slots busy, queue, time until unload.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    daemonlink.add_options(p)
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("stop", parents=[common], help="unload a model from the running daemon",
                       description="Unload MODEL now; its running requests finish first.")
    p.add_argument("model", metavar="MODEL")
    daemonlink.add_options(p)
    p.set_defaults(func=cmd_stop)
