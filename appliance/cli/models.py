"""Model store commands: pull, ls, verify, rm, import.

Model names resolve aliases; an unknown name is a usage error (exit 2) that lists the known ids.
Mismatches and failed downloads exit 1 (see cli/__init__.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from pydantic import ValidationError

from ..config import Catalog, ModelConfig, Settings, _first_error, load_settings
from ..errors import ApplianceError, UsageError
from ..progress import byte_progress
from ..units import format_size
from .tables import format_table

if TYPE_CHECKING:
    from ..store import PullResult


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


def _pull_repo(args: argparse.Namespace, settings: Settings, ref_text: str) -> tuple[str, ModelConfig]:
    """A repo reference: list it on the hub, pick the file(s), pull, then add the pinned entry
    (pulled first, so a failed download leaves no entry behind). -> (model id, its config)."""
    from ..errors import OfflineError
    from ..store.catalog_edit import add_model_entry
    from ..store.download import hub_endpoint, hub_offline
    from ..store.hubrepo import parse_ref, resolve

    ref = parse_ref(ref_text)
    if hub_offline():
        raise OfflineError(f"HF_HUB_OFFLINE is set: cannot list {ref.repo} on the hub")
    found = resolve(ref, hub_endpoint())
    for note in found.notes:
        print(f"appliance: {note}", file=sys.stderr)
    mid = args.name or found.default_id()
    entry = found.entry()
    cfg = ModelConfig.model_validate(entry)
    print(f"{mid}: {cfg.source} at commit {found.commit[:12]}"
          + (f" ({len(found.shards)} shards)" if len(found.shards) > 1 else "")
          + (f", projector {found.mmproj.path}" if found.mmproj else ""), file=sys.stderr)
    existing = settings.catalog.resolve(mid)
    if existing:  # the same model again: pull the entry as it stands (it may be hand-tuned)
        old = existing[1]
        if old.source != cfg.source:
            raise UsageError(f"model {mid!r} already exists in {settings.catalog.path} for {old.source}; "
                             "choose another --name")
        if old.sha256 is not None and cfg.sha256 is not None and old.sha256 != cfg.sha256:
            raise UsageError(f"model {mid!r} is pinned to another version of {cfg.source} (the hub's "
                             f"{ref.revision or 'main'} is now commit {found.commit[:12]}); `appliance rm "
                             f"{mid}` and pull again, or choose another --name")
        _pull_one(args, settings, *existing)
        return existing
    r = _pull_one(args, settings, mid, cfg, hint_pin=False)
    entry["sha256"] = r.shas[0] if len(r.shas) == 1 else r.shas  # what was verified, listed or not
    if r.mmproj_sha256:
        entry["mmproj_sha256"] = r.mmproj_sha256
    add_model_entry(settings.catalog, mid, entry)
    if found.license:  # the model card's, for `show` (GGUFs often carry none)
        store = _store(settings)
        if (rec := store.record(mid)) is not None:
            store.write_record(dataclasses.replace(rec, extra={**rec.extra, "license": found.license}))
    print(f"{mid}: added to {settings.catalog.path}")
    return mid, cfg


def _pull_one(args: argparse.Namespace, settings: Settings, mid: str, cfg: ModelConfig,
              hint_pin: bool = True) -> PullResult:
    from ..store import pull_model

    r = pull_model(_store(settings), mid, cfg, wait=not args.no_wait, progress=not args.quiet,
                   echo=lambda s: print(s, file=sys.stderr, flush=True))
    if r.up_to_date:
        print(f"{mid}: up to date")
    else:
        how = ", ".join(sorted(set(r.via)))
        print(f"{mid}: verified ({how})")
    if r.unpinned and hint_pin:
        pin = json.dumps(r.unpinned[0]) if len(r.unpinned) == 1 else json.dumps(r.unpinned)
        origin = "used the hub's LFS sha256" if cfg.source.startswith("hf://") else "hashed the file as it is now"
        print(f"{mid}: no sha256 pinned, {origin}; pin it: sha256 = {pin}")
    return r


def cmd_pull(args: argparse.Namespace) -> int:
    from ..store.hubrepo import looks_like_repo

    settings = _settings(args)
    if args.name and len(args.model) != 1:
        raise UsageError("--name takes exactly one repo to pull")
    targets: list[tuple[str, ModelConfig] | str] = []
    for name in args.model:  # a catalog id or alias first; else a repo reference
        hit = settings.catalog.resolve(name)
        if hit and not args.name:
            targets.append(hit)
        elif looks_like_repo(name):
            targets.append(name)
        elif args.name:
            raise UsageError(f"--name names a model pulled from a hub repo; {name!r} is not owner/repo")
        else:
            targets.extend(_resolve(settings.catalog, [name]))
    if not args.model:
        targets = list(settings.catalog.models.items())
    if not targets:
        raise UsageError(f"no models in the catalog ({settings.catalog.path}); add one with `appliance pull owner/repo` or `appliance import`")
    failed: list[ApplianceError] = []
    for target in targets:
        try:
            if isinstance(target, str):
                _pull_repo(args, settings, target)
            else:
                _pull_one(args, settings, *target)
        except ApplianceError as e:
            if len(targets) == 1:
                raise
            what = target if isinstance(target, str) else target[0]
            print(f"appliance: error: {what}: {e.message}", file=sys.stderr)
            failed.append(e)
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
    print(format_table(table))
    if not rows:
        print(f"(no models in {settings.catalog.path})", file=sys.stderr)
    return 0


# --- verify, rm, import ---------------------------------------------------------------------------


def _hashed_size(store, mid: str, cfg: ModelConfig) -> int | None:  # noqa: ANN001
    """The bytes `verify` reads: the shards and the projector, if any."""
    st = store.state(mid, cfg)
    mm = st.record.mmproj if st.record else None
    return None if st.size is None else st.size + (mm.size if mm else 0)


def cmd_verify(args: argparse.Namespace) -> int:
    from ..errors import ChecksumMismatch

    settings = _settings(args)
    store = _store(settings)
    bad = 0
    for mid, cfg in _resolve(settings.catalog, args.model):
        try:
            with byte_progress(_hashed_size(store, mid, cfg), mid, enabled=not args.quiet) as bar:
                st = store.verify(mid, cfg, progress=bar.update)
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
    from ..store.catalog_edit import remove_model_entry

    (mid, _), = _resolve(settings.catalog, [args.model])
    path = settings.catalog.path
    if not args.keep_entry and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        # checked before any file goes: a half-done rm (files gone, entry left) helps nobody
        raise UsageError(f"cannot edit {path} (not writable by this user): run as its owner, or --keep-entry "
                         "to remove only the files")
    done = _store(settings).remove(mid, settings.catalog)
    print(f"{mid}: deleted {len(done.paths)} file(s)")
    for sha, users in done.shared.items():
        print(f"{mid}: kept sha256-{sha[:12]}…, also used by {', '.join(users)}")
    if args.keep_entry:
        print(f"{mid}: kept its entry in {settings.catalog.path} (--keep-entry); `appliance pull {mid}` fetches it again")
    elif remove_model_entry(settings.catalog, mid):
        print(f"{mid}: removed its entry from {settings.catalog.path}")
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
    with open(path, "rb") as f, byte_progress(path.stat().st_size, path.name, enabled=not args.quiet) as bar:
        sha = store.install_stream(f, None, what=str(path), progress=bar.update)
    entry = {"source": source, "sha256": sha}
    cfg = ModelConfig.model_validate(entry)
    add_model_entry(settings.catalog, args.name, entry)
    store.new_record(args.name, cfg, [BlobRef(sha, path.stat().st_size, cfg.source)])
    print(f"{args.name}: imported {path} (sha256 {sha}) into {settings.catalog.path}")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("pull", parents=[common], help="download and verify models (catalog ids or hub repos)",
                       description="Download catalog models (all if none named), resuming and verifying. "
                       "A hub repo (owner/repo[:QUANT], hf://owner/repo[/file.gguf], ...@revision) is listed, "
                       "its GGUF picked by quantization (default Q4_K_M, else the nearest), pulled, and added "
                       "to the catalog pinned to the commit and sha256.")
    p.add_argument("model", nargs="*", metavar="MODEL", help="model id or alias, or REPO[:QUANT][@REVISION]")
    p.add_argument("--name", metavar="ID", help="the catalog id for a pulled repo (default: from the repo and quant)")
    p.add_argument("--no-wait", action="store_true", help="fail (exit 1) instead of waiting when another pull of the model runs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress (a bar on a terminal, periodic lines on a pipe)")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("ls", parents=[common], help="list catalog models and their state",
                       description="Catalog models: state (missing/present/verified), loaded, size, quantization, context.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("verify", parents=[common], help="re-hash models; exit 1 on a mismatch",
                       description="Re-hash the files of the named models (all if none); exit 1 on any mismatch.")
    p.add_argument("model", nargs="*", metavar="MODEL")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("rm", parents=[common], help="remove a model's files and catalog entry",
                       description="Remove the model's files that no other catalog entry uses, and its catalog "
                       "entry; refuses while loaded.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--keep-entry", action="store_true", help="keep the catalog entry (pull fetches the files again)")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("import", parents=[common], help="import a local GGUF into the store and catalog",
                       description="Hash and copy PATH.gguf into the store and add a catalog entry.")
    p.add_argument("path", metavar="PATH.gguf")
    p.add_argument("--name", required=True, metavar="MODEL", help="the new model id")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress")
    p.set_defaults(func=cmd_import)
