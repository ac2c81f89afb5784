"""Ed25519 keys and manifest signatures (the `cryptography` package does the maths).

`manifest.sig` holds the base64 (standard alphabet) of the raw 64-byte Ed25519 signature over
the exact bytes of `manifest.json`, followed by one newline: printable, and checkable with any
Ed25519 tool. A key is named by its fingerprint, `ed25519:` + the first 16 hex digits of the
sha256 of the raw 32-byte public key; that string is what records, `ls` and /admin/models show.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import BundleError, UsageError

SIGNATURE_BYTES = 64


def public_path(keyfile: Path) -> Path:
    return keyfile.with_name(keyfile.name + ".pub")


def fingerprint(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(keyfile: Path) -> str:
    """Write KEYFILE (private, mode 0600) and KEYFILE.pub; never overwrite. Returns the fingerprint."""
    pub_file = public_path(keyfile)
    for p in (keyfile, pub_file):
        if p.exists() or p.is_symlink():
            raise UsageError(f"{p} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(keyfile, private_pem, 0o600)
    try:
        _write_new(pub_file, public_pem, 0o644)
    except BaseException:
        keyfile.unlink(missing_ok=True)
        raise
    return fingerprint(key.public_key())


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """O_EXCL: a file that appeared since the check is still not overwritten."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise UsageError(f"{path} already exists; refusing to overwrite a key") from None
    except OSError as e:
        raise UsageError(f"cannot create {path}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)  # the umask may have narrowed or (for .pub) not mattered
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = _load(path, private=True)
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = _load(path, private=False)
    if isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path} is a private key; --trust takes the public key ({path}.pub)")
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{path} is not an Ed25519 public key")
    return key


def _load(path: Path, *, private: bool) -> object:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read key {path}: {e.strerror}") from None
    try:
        if b"PRIVATE KEY" in data:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        kind = "private" if private else "public"
        raise UsageError(f"{path} is not a PEM Ed25519 {kind} key: {e}") from None


def sign(key: Ed25519PrivateKey, manifest: bytes) -> bytes:
    """The contents of manifest.sig for these exact manifest bytes."""
    return base64.b64encode(key.sign(manifest)) + b"\n"


def check_signature(key: Ed25519PublicKey, manifest: bytes, sig_file: bytes) -> None:
    """Raise BundleError unless sig_file is `key`'s signature over these exact bytes."""
    try:
        raw = base64.b64decode(sig_file.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BundleError("manifest.sig is not base64") from None
    if len(raw) != SIGNATURE_BYTES:
        raise BundleError(f"manifest.sig holds {len(raw)} bytes, an Ed25519 signature has {SIGNATURE_BYTES}")
    try:
        key.verify(raw, manifest)
    except InvalidSignature:
        raise BundleError(
            f"manifest.sig does not match manifest.json for trusted key {fingerprint(key)} "
            "(tampered manifest or a different signer)"
        ) from None
