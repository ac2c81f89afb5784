"""`appliance bundle keygen|export|verify|import`: offline bundles for air-gapped sites."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from ..config import load_settings
from ..errors import UsageError
from ..progress import byte_progress
from ..store.core import Store


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("bundle", help="offline bundles: keygen, export, verify, import",
                       description="Offline bundles for air-gapped sites (docs/bundles.md).")
    bsub = p.add_subparsers(dest="bundle_command", metavar="COMMAND", parser_class=type(p))
    bsub.required = True

    k = bsub.add_parser("keygen", help="create an Ed25519 signing key pair",
                        description="Write KEYFILE (private, mode 0600) and KEYFILE.pub (PEM Ed25519). "
                                    "Never overwrites.")
    k.add_argument("keyfile", metavar="KEYFILE", type=Path)
    k.set_defaults(func=_keygen)

    e = bsub.add_parser("export", parents=[common], help="write models from the store into one bundle",
                        description="Stream the named catalog models (with all their shards) into one tar.")
    e.add_argument("names", metavar="MODEL", nargs="+", help="catalog ids or aliases")
    e.add_argument("-o", "--output", metavar="FILE", required=True, help="bundle file, or - for stdout")
    e.add_argument("--sign", metavar="KEYFILE", type=Path, help="private key from `bundle keygen`")
    e.set_defaults(func=_export)

    v = bsub.add_parser("verify", help="check a bundle without installing it",
                        description="Check structure, every checksum and (with --trust) the signature.")
    v.add_argument("file", metavar="FILE", help="bundle file, or - for stdin")
    v.add_argument("--trust", metavar="PUBKEY", type=Path, help="require a signature by this public key")
    v.set_defaults(func=_verify)

    i = bsub.add_parser("import", parents=[common], help="verify a bundle and install its models",
                        description="Verify everything while streaming into the store's temp area, then "
                                    "install blobs, records and catalog entries.")
    i.add_argument("file", metavar="FILE", help="bundle file, or - for stdin")
    i.add_argument("--trust", metavar="PUBKEY", type=Path,
                   help="refuse unless signed by this public key (recorded as the models' signer)")
    i.add_argument("--replace", action="store_true",
                   help="overwrite catalog entries of the same id that differ from the bundle's")
    i.set_defaults(func=_import)


def _progress_factory() -> tuple[Callable[[int], Callable[[int], None]], Callable[[], None]]:
    """Byte progress on stderr: a bar on a terminal, periodic lines on a pipe."""
    bars: list[Any] = []

    def make(total: int) -> Callable[[int], None]:
        bar = byte_progress(total, "bundle")
        bars.append(bar)
        return bar.update

    def close() -> None:
        for bar in bars:
            bar.close()

    return make, close


@contextlib.contextmanager
def _input(name: str) -> Iterator[BinaryIO]:
    if name == "-":
        yield sys.stdin.buffer
        return
    try:
        f = open(name, "rb")
    except OSError as e:
        raise UsageError(f"cannot open bundle {name}: {e.strerror}") from None
    with f:
        yield f


def _trust(path: Path | None):  # noqa: ANN202
    from ..bundle.signing import load_public_key

    return load_public_key(path) if path else None


def _keygen(args: argparse.Namespace) -> int:
    from ..bundle.signing import generate_keypair, public_path

    fp = generate_keypair(args.keyfile)
    print(f"wrote {args.keyfile} (private, keep it offline) and {public_path(args.keyfile)} ({fp})")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..bundle.exporter import export_to_file, plan_export, write_export
    from ..bundle.signing import load_private_key

    settings = load_settings(args.config, args.models)
    key = load_private_key(args.sign) if args.sign else None
    if args.output == "-" and sys.stdout.isatty():
        raise UsageError("refusing to write a bundle to a terminal; use -o FILE or a pipe")
    store = Store.open(settings.config.store.path)
    plan = plan_export(store, settings.catalog, args.names)
    make, close = _progress_factory()
    try:
        progress = make(plan.manifest.total_bytes)
        if args.output == "-":
            signer = write_export(plan, sys.stdout.buffer, key, progress)
            sys.stdout.buffer.flush()
        else:
            signer = export_to_file(plan, Path(args.output), key, progress)
    finally:
        close()
    ids = ", ".join(m.id for m in plan.manifest.models)
    files = sum(len(m.files) for m in plan.manifest.models)
    signed = f", signed by {signer}" if signer else ", unsigned"
    where = "stdout" if args.output == "-" else args.output
    print(f"exported {ids} ({files} file(s), {plan.manifest.total_bytes} bytes{signed}) to {where}",
          file=sys.stderr if args.output == "-" else sys.stdout)
    return 0


def _signature_line(signed: bool, signer: str | None) -> str:
    if signer:
        return f"signature good (trusted key {signer})"
    if signed:
        return "signed, signature not checked (pass --trust PUBKEY to check it)"
    return "unsigned"


def _verify(args: argparse.Namespace) -> int:
    from ..bundle.tarstream import BundleReader

    trust = _trust(args.trust)
    make, close = _progress_factory()
    try:
        with _input(args.file) as f:
            reader = BundleReader(f, trust)
            manifest = reader.head()
            progress = make(manifest.total_bytes)
            for _, _, chunks in reader.files(progress):
                for _ in chunks:
                    pass
            reader.end()
    finally:
        close()
    files = sum(len(m.files) for m in manifest.models)
    print(f"bundle ok: format {manifest.format_version}, created {manifest.created} by appliance "
          f"{manifest.appliance_version}; {len(manifest.models)} model(s), {files} file(s), "
          f"{manifest.total_bytes} bytes; {_signature_line(reader.signed, reader.signer)}")
    for m in manifest.models:
        for bf in m.files:
            print(f"  {m.id}  {bf.name}  {bf.size}  sha256:{bf.sha256}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from ..bundle.importer import import_bundle

    settings = load_settings(args.config, args.models)
    trust = _trust(args.trust)
    store = Store.open(settings.config.store.path)
    make, close = _progress_factory()
    try:
        with _input(args.file) as f:
            res = import_bundle(f, store, settings.catalog.path, trust=trust,
                                replace_entries=args.replace, progress_factory=make)
    finally:
        close()
    print(f"imported {', '.join(m.id for m in res.manifest.models)}: "
          f"{len(res.blobs_written)} blob(s) written, {len(res.blobs_present)} already present; "
          f"{_signature_line(res.signed, res.signer)}")
    for what, ids in (("added to", res.catalog_added), ("replaced in", res.catalog_replaced),
                      ("unchanged in", res.catalog_unchanged)):
        if ids:
            print(f"  {what} {settings.catalog.path}: {', '.join(ids)}")
    return 0
