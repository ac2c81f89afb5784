"""Bundles on the wire: a plain (uncompressed) tar written and read as a stream.

Streaming (`w|` / `r|`) means neither side ever seeks, so a bundle can go through a pipe or
stdin, and memory stays flat whatever the file sizes: data moves in CHUNK-sized pieces.
The reader trusts nothing in the tar headers: every member must be the next one the
manifest says, a regular file of the manifest's size and checksum.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, NoReturn

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import BundleError, ChecksumMismatch
from .manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_NAME,
    BundleFile,
    BundleModel,
    Manifest,
    check_member_name,
    parse_manifest,
)
from .signing import check_signature, fingerprint

CHUNK = 1 << 20
Progress = Callable[[int], None]


# --- writing --------------------------------------------------------------------------------


class _CheckedReader:
    """A file object that hashes what tarfile reads from it, so export re-verifies each blob."""

    def __init__(self, f: BinaryIO, progress: Progress | None) -> None:
        self._f, self._progress = f, progress
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.hash.update(data)
        self.size += len(data)
        if self._progress and data:
            self._progress(len(data))
        return data


def _member(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = size, mtime, 0o644
    ti.type = tarfile.REGTYPE
    return ti


def write_bundle(
    out: BinaryIO,
    manifest: bytes,
    signature: bytes | None,
    files: Iterable[tuple[BundleFile, Path]],
    *,
    mtime: int,
    progress: Progress | None = None,
) -> None:
    """Write manifest.json, manifest.sig (if any), then each file, re-hashing as it streams.

    A blob whose bytes no longer match the manifest raises ChecksumMismatch after it was
    written: the caller discards the output (the bundle would fail verification anyway).
    """
    try:
        with tarfile.open(fileobj=out, mode="w|", bufsize=CHUNK, format=tarfile.PAX_FORMAT) as tar:
            tar.copybufsize = CHUNK  # type: ignore[attr-defined]  # undeclared in typeshed, read by addfile
            tar.addfile(_member(MANIFEST_NAME, len(manifest), mtime), io.BytesIO(manifest))
            if signature is not None:
                tar.addfile(_member(SIGNATURE_NAME, len(signature), mtime), io.BytesIO(signature))
            for bf, path in files:
                with open(path, "rb") as f:
                    reader = _CheckedReader(f, progress)
                    try:
                        tar.addfile(_member(bf.name, bf.size, mtime), reader)  # type: ignore[arg-type]
                    except tarfile.ReadError:
                        raise BundleError(f"{path} is shorter than its recorded {bf.size} bytes") from None
                    if f.read(1):
                        raise BundleError(f"{path} is longer than its recorded {bf.size} bytes")
                got = reader.hash.hexdigest()
                if got != bf.sha256:
                    raise ChecksumMismatch(f"{path} (store blob of {bf.name})", bf.sha256, got)
    except OSError as e:
        raise BundleError(f"cannot write the bundle: {e.strerror or e}") from None


# --- reading --------------------------------------------------------------------------------

_KINDS = [
    (tarfile.TarInfo.issym, "a symbolic link"),
    (tarfile.TarInfo.islnk, "a hard link"),
    (tarfile.TarInfo.isdir, "a directory"),
    (tarfile.TarInfo.ischr, "a character device"),
    (tarfile.TarInfo.isblk, "a block device"),
    (tarfile.TarInfo.isfifo, "a FIFO"),
    (tarfile.TarInfo.issparse, "a sparse file"),
]


MAX_EXTENDED_HEADER = 64 * 1024


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a pax or GNU long-name header whole into memory: bound it first."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        extended = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                    tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
        if self.type in extended and self.size > MAX_EXTENDED_HEADER:
            raise BundleError(f"extended tar header of {self.size} bytes, over the {MAX_EXTENDED_HEADER}-byte limit")
        return super()._proc_member(tarfile_)  # type: ignore[misc]


def _check_kind(ti: tarfile.TarInfo) -> None:
    if ti.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and not ti.issparse():
        return
    kind = next((k for test, k in _KINDS if test(ti)), f"of tar type {ti.type!r}")
    raise BundleError(f"bundle member {ti.name!r} is {kind}; bundles hold regular files only")


class BundleReader:
    """Reads one bundle front to back: head() first, then files(), then end().

    With `trust`, the manifest must carry a signature by that key; without it, a signature
    is carried along but cannot be checked (there is no key to check it against).
    """

    def __init__(self, stream: BinaryIO, trust: Ed25519PublicKey | None = None) -> None:
        self._stream = stream
        self._trust = trust
        self._tar: tarfile.TarFile | None = None
        self._seen: set[str] = set()
        self._pending: tarfile.TarInfo | None = None
        self.manifest: Manifest | None = None
        self.manifest_bytes = b""
        self.signed = False
        self.signer: str | None = None  # fingerprint, only when checked against `trust`

    # tar access, every tarfile failure becomes one clear BundleError
    def _next(self) -> tarfile.TarInfo | None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return pending
        try:
            if self._tar is None:
                self._tar = tarfile.open(fileobj=self._stream, mode="r|", bufsize=CHUNK, tarinfo=_BoundedTarInfo)
            ti = self._tar.next()
        except (tarfile.TarError, EOFError) as e:
            raise BundleError(f"not a readable bundle (truncated or corrupt tar): {e}") from None
        if ti is not None:
            check_member_name(ti.name)
            _check_kind(ti)
            if ti.name in self._seen:
                raise BundleError(f"bundle member {ti.name!r} appears twice")
            self._seen.add(ti.name)
        return ti

    def _small(self, ti: tarfile.TarInfo, limit: int) -> bytes:
        if ti.size > limit:
            raise BundleError(f"{ti.name} is {ti.size} bytes, over the {limit}-byte limit")
        assert self._tar is not None
        try:
            f = self._tar.extractfile(ti)
            data = f.read() if f else b""
        except (tarfile.TarError, EOFError) as e:
            raise BundleError(f"bundle is truncated in {ti.name}: {e}") from None
        if len(data) != ti.size:
            raise BundleError(f"bundle is truncated in {ti.name}")
        return data

    def head(self) -> Manifest:
        """Read and check manifest.json and manifest.sig (before any model byte is read)."""
        ti = self._next()
        if ti is None:
            raise BundleError("empty bundle: no manifest.json")
        if ti.name != MANIFEST_NAME:
            raise BundleError(f"{MANIFEST_NAME} must be the first member of a bundle, found {ti.name!r}")
        self.manifest_bytes = self._small(ti, MAX_MANIFEST_BYTES)
        self.manifest = parse_manifest(self.manifest_bytes)
        ti = self._next()
        if ti is not None and ti.name == SIGNATURE_NAME:
            self.signed = True
            sig = self._small(ti, MAX_SIGNATURE_BYTES)
            if self._trust is not None:
                check_signature(self._trust, self.manifest_bytes, sig)
                self.signer = fingerprint(self._trust)
        else:
            self._pending = ti
            if self._trust is not None:
                raise BundleError(f"bundle is not signed, but --trust {fingerprint(self._trust)} requires a signature")
        return self.manifest

    def files(self, progress: Progress | None = None) -> Iterator[tuple[BundleModel, BundleFile, Iterator[bytes]]]:
        """Each listed file in order, with its data as chunks; the chunk iterator checks the
        size and sha256 when it ends and raises there. Consume each one fully."""
        assert self.manifest is not None, "head() first"
        listed = {bf.name for _, bf in self.manifest.files()}
        for model, bf in self.manifest.files():
            ti = self._next()
            if ti is None:
                raise BundleError(f"bundle ends before {bf.name} (truncated?)")
            if ti.name != bf.name:
                if ti.name in listed:
                    raise BundleError(f"bundle member {ti.name!r} is out of manifest order: expected {bf.name!r}")
                _unlisted(ti.name)
            if ti.size != bf.size:
                raise BundleError(f"{bf.name}: the manifest says {bf.size} bytes, the tar holds {ti.size}")
            yield model, bf, self._data(ti, bf, progress)

    def _data(self, ti: tarfile.TarInfo, bf: BundleFile, progress: Progress | None) -> Iterator[bytes]:
        assert self._tar is not None
        h, got = hashlib.sha256(), 0
        try:
            f = self._tar.extractfile(ti)
            assert f is not None
            while block := f.read(CHUNK):
                h.update(block)
                got += len(block)
                if progress:
                    progress(len(block))
                yield block
        except (tarfile.TarError, EOFError) as e:
            raise BundleError(f"bundle is truncated in {bf.name}: {e}") from None
        if got != bf.size:
            raise BundleError(f"bundle is truncated in {bf.name}: {got} of {bf.size} bytes")
        digest = h.hexdigest()
        if digest != bf.sha256:
            raise ChecksumMismatch(f"{bf.name} in the bundle", bf.sha256, digest)

    def end(self) -> None:
        """After the last listed file nothing else may follow."""
        ti = self._next()
        if ti is not None:
            _unlisted(ti.name)


def _unlisted(name: str) -> NoReturn:
    if name == SIGNATURE_NAME:
        raise BundleError(f"{SIGNATURE_NAME} must come right after {MANIFEST_NAME}")
    raise BundleError(f"bundle member {name!r} is not in the manifest")


def verify_stream(
    stream: BinaryIO, trust: Ed25519PublicKey | None = None, progress: Progress | None = None
) -> BundleReader:
    """Check a whole bundle without keeping anything: structure, checksums, signature."""
    reader = BundleReader(stream, trust)
    reader.head()
    for _, _, chunks in reader.files(progress):
        for _ in chunks:
            pass
    reader.end()
    return reader
