"""Model store commands: pull, ls, verify, rm, import.

Model names resolve aliases; an unknown name is a usage error (exit 2) that lists the known ids.
Mismatches and failed downloads exit 1 (see cli/__init__.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from pydantic import ValidationError

from ..config import Catalog, ModelConfig, Settings, _first_error, load_settings
from ..errors import ApplianceError, UsageError
from ..units import format_size


def _ask_daemon() -> set[str] | None:
    """Marker default: `_store` replaces it with a query over the daemon's admin socket."""
    return None


# Returns the loaded model ids, or None when no daemon answers (tests may replace it).
loaded_models_probe: Callable[[], set[str] | None] = _ask_daemon


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(config=args.config, models=args.models)


def _store(settings: Settings):  # noqa: ANN202
    from ..store import Store

    probe = loaded_models_probe
    if probe is _ask_daemon:  # [operations] the running daemon, over its admin socket
        from ..service.adminclient import loaded_models

        probe = lambda: loaded_models(settings)  # noqa: E731
    return Store.open(settings.config.store.path, loaded_models=probe)


def _resolve(catalog: Catalog, names: list[str]) -> list[tuple[str, ModelConfig]]:
    if not names:
        return list(catalog.models.items())
    out = []
    for name in names:
        hit = catalog.resolve(name)
        if hit is None:
            known = ", ".join(sorted(catalog.models)) or "none"
            raise UsageError(f"unknown model {name!r} (known: {known}; catalog {catalog.path})")
        out.append(hit)
    return out


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else ""


# --- pull ------------------------------------------------------------------------------------


def cmd_pull(args: argparse.Namespace) -> int:
    from ..store import pull_model

    settings = _settings(args)
    targets = _resolve(settings.catalog, args.model)
    if not targets:
        raise UsageError(f"no models in the catalog ({settings.catalog.path}); add one or use `appliance import`")
    store = _store(settings)
    failed: list[ApplianceError] = []
    for mid, cfg in targets:
        try:
            r = pull_model(store, mid, cfg, wait=not args.no_wait, progress=not args.quiet,
                           echo=lambda s: print(s, file=sys.stderr, flush=True))
        except ApplianceError as e:
            if len(targets) == 1:
                raise
            print(f"appliance: error: {mid}: {e.message}", file=sys.stderr)
            failed.append(e)
            continue
        if r.up_to_date:
            print(f"{mid}: up to date")
        else:
            how = ", ".join(sorted(set(r.via)))
            print(f"{mid}: verified ({how})")
        if r.unpinned:
            pin = json.dumps(r.unpinned[0]) if len(r.unpinned) == 1 else json.dumps(r.unpinned)
            print(f"{mid}: no sha256 pinned, used the hub's LFS sha256; pin it: sha256 = {pin}")
    return max((e.exit_code for e in failed), default=0)


# --- ls ----------------------------------------------------------------------------------------


def _row(store, mid: str, cfg: ModelConfig, loaded: set[str] | None) -> dict[str, object]:  # noqa: ANN001
    from ..store import read_gguf_info

    st = store.state(mid, cfg)
    quant = None
    if st.paths:
        try:
            quant = read_gguf_info(st.paths).quantization
        except Exception:  # a damaged header still lists; `verify` says what is wrong
            quant = "?"
    return {
        "id": mid,
        "aliases": list(cfg.aliases),
        "state": st.state,
        "verified_at": _when(st.verified_at) or None,
        "loaded": None if loaded is None else mid in loaded,
        "size": st.size,
        "quantization": quant,
        "context": cfg.context,
        "parallel": cfg.parallel,
        "source": cfg.source,
        "sha256": st.record.shas if st.record else [p for p in cfg.pinned_sha256 if p],
        "signer": st.record.bundle_signer if st.record else None,  # offline bundle's key, if verified
    }


def cmd_ls(args: argparse.Namespace) -> int:
    settings = _settings(args)
    store = _store(settings)
    loaded = store.loaded_models()
    rows = [_row(store, mid, cfg, loaded) for mid, cfg in settings.catalog.models.items()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table: list[tuple[str, ...]] = [("ID", "STATE", "LOADED", "SIZE", "QUANT", "CONTEXT", "PARALLEL")]
    signers = any(r["signer"] for r in rows)  # the SIGNER column only where bundles were signed
    if signers:
        table[0] += ("SIGNER",)
    for r in rows:
        state = str(r["state"]) + (f" {r['verified_at']}" if r["verified_at"] else "")
        lo = "?" if r["loaded"] is None else ("yes" if r["loaded"] else "no")
        size = format_size(r["size"]) if r["size"] is not None else "-"  # type: ignore[arg-type]
        table.append((str(r["id"]), state, lo, size, str(r["quantization"] or "-"), str(r["context"]), str(r["parallel"])))
        if signers:
            table[-1] += (str(r["signer"] or "-"),)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    if not rows:
        print(f"(no models in {settings.catalog.path})", file=sys.stderr)
    return 0


# --- verify, rm, import ---------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    from ..errors import ChecksumMismatch

    settings = _settings(args)
    store = _store(settings)
    bad = 0
    for mid, cfg in _resolve(settings.catalog, args.model):
        try:
            st = store.verify(mid, cfg)
        except ChecksumMismatch as e:
            print(f"appliance: error: {e.message}", file=sys.stderr)
            bad += 1
            continue
        if st.state == "missing":  # nothing to vouch for: a failure, as a mismatch is
            print(f"appliance: error: {mid}: missing (run `appliance pull {mid}`)", file=sys.stderr)
            bad += 1
        else:
            print(f"{mid}: verified {_when(st.verified_at)}")
    return 1 if bad else 0


def cmd_rm(args: argparse.Namespace) -> int:
    settings = _settings(args)
    (mid, _), = _resolve(settings.catalog, [args.model])
    removed = _store(settings).remove(mid, settings.catalog)
    kept = "" if removed else " (no files of its own: blobs shared with other entries are kept)"
    print(f"{mid}: removed {len(removed)} file(s){kept}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from ..store import BlobRef
    from ..store.catalog_edit import add_model_entry
    from ..store.ggufmeta import check_gguf

    settings = _settings(args)
    path = Path(args.path).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"not a file: {path}")
    if settings.catalog.resolve(args.name):
        raise UsageError(f"model {args.name!r} already exists in {settings.catalog.path}; choose another --name")
    # The entry is checked before any byte is copied (a placeholder checksum stands in for the
    # real one, so the single-file check applies): a refused entry leaves no orphan blob.
    source = f"file://{path}"
    try:
        ModelConfig.model_validate({"source": source, "sha256": "0" * 64})
    except ValidationError as e:
        _, msg = _first_error(e)
        raise UsageError(f"cannot import {path} as {args.name!r}: {msg}") from None
    check_gguf(path)  # a non-GGUF file would list as verified and fail at its first load
    store = _store(settings)
    store.check_disk(path.stat().st_size)
    with open(path, "rb") as f:
        sha = store.install_stream(f, None, what=str(path))
    entry = {"source": source, "sha256": sha}
    cfg = ModelConfig.model_validate(entry)
    add_model_entry(settings.catalog, args.name, entry)
    store.new_record(args.name, cfg, [BlobRef(sha, path.stat().st_size, cfg.source)])
    print(f"{args.name}: imported {path} (sha256 {sha}) into {settings.catalog.path}")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("pull", parents=[common], help="download and verify models",
                       description="Download catalog models (all if none named), resuming and verifying.")
    p.add_argument("model", nargs="*", metavar="MODEL", help="model id or alias")
    p.add_argument("--no-wait", action="store_true", help="fail (exit 1) instead of waiting when another pull of the model runs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("ls", parents=[common], help="list catalog models and their state",
                       description="Catalog models: state (missing/present/verified), loaded, size, quantization, context.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("verify", parents=[common], help="re-hash models; exit 1 on a mismatch",
                       description="Re-hash the files of the named models (all if none); exit 1 on any mismatch.")
    p.add_argument("model", nargs="*", metavar="MODEL")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("rm", parents=[common], help="remove a model's files",
                       description="Remove the model's files that no other catalog entry uses; refuses while loaded.")
    p.add_argument("model", metavar="MODEL")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("import", parents=[common], help="import a local GGUF into the store and catalog",
                       description="Hash and copy PATH.gguf into the store and add a catalog entry.")
    p.add_argument("path", metavar="PATH.gguf")
    p.add_argument("--name", required=True, metavar="MODEL", help="the new model id")
    p.set_defaults(func=cmd_import)
