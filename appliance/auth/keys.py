"""The keys file (`keys.toml`): who may call the API, with what scope, models and rate.

Tokens are never stored, only their SHA-256, so a leaked keys file grants nothing. The
daemon re-reads the file whenever its (inode, size, mtime) changes, checked on each request
with one `stat`, so `appliance keys revoke` takes effect at the next request without a
restart. Writes are atomic (temp file + rename) so a reader never sees half a file; a new file
is 0600, a rewritten one keeps its owner, group and mode (without world bits). `create` and
`revoke` hold a flock on `keys.toml.lock` around read-modify-write (atomicfile.locked, as for
models.toml), so two at once cannot lose a key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit

from ..atomicfile import locked, write_atomic
from ..errors import ApplianceError, ConfigError, InvalidAPIKey, UsageError

log = logging.getLogger(__name__)

TOKEN_PREFIX = "sk-appl-"
INFERENCE = "inference"
ADMIN = "admin"
SCOPES = (INFERENCE, ADMIN)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ApiKey:
    """One key as the daemon sees it (no token, only its hash)."""

    name: str
    sha256: str
    scopes: tuple[str, ...] = (INFERENCE,)
    models: tuple[str, ...] = ()  # empty: every model
    rpm: int = 0  # requests per minute; 0: unlimited
    created: str = ""

    def has_scope(self, scope: str) -> bool:
        """`admin` covers everything, `inference` only /v1."""
        return ADMIN in self.scopes or scope in self.scopes

    def may_use(self, *names: str) -> bool:
        """True when the list is empty or names any of `names` (a model id or one of its aliases)."""
        return not self.models or any(n in self.models for n in names)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """32 random bytes, URL-safe, with a prefix that secret scanners and humans recognise."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


# --- reading -------------------------------------------------------------------------------


def _parse(raw: dict[str, Any], file: str) -> dict[str, ApiKey]:
    keys_table = raw.get("keys", {})
    extra = set(raw) - {"keys"}
    if extra:
        raise ConfigError(file, sorted(extra)[0], "unknown key")
    if not isinstance(keys_table, dict):
        raise ConfigError(file, "keys", "must be a table of [keys.NAME] tables")
    out: dict[str, ApiKey] = {}
    for name, body in keys_table.items():
        where = f"keys.{name}"
        if not isinstance(body, dict):
            raise ConfigError(file, where, "must be a table")
        unknown = set(body) - {"sha256", "scopes", "models", "rpm", "created"}
        if unknown:
            raise ConfigError(file, f"{where}.{sorted(unknown)[0]}", "unknown key")
        sha = body.get("sha256")
        if not isinstance(sha, str) or not _SHA_RE.match(sha):
            raise ConfigError(file, f"{where}.sha256", "must be 64 lowercase hex digits")
        scopes = body.get("scopes", [INFERENCE])
        if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
            raise ConfigError(file, f"{where}.scopes", f"must be a non-empty list of {SCOPES}")
        models = body.get("models", [])
        if not isinstance(models, list) or any(not isinstance(m, str) for m in models):
            raise ConfigError(file, f"{where}.models", "must be a list of model ids")
        rpm = body.get("rpm", 0)
        if not isinstance(rpm, int) or isinstance(rpm, bool) or rpm < 0:
            raise ConfigError(file, f"{where}.rpm", "must be an integer >= 0")
        created = body.get("created", "")
        out[name] = ApiKey(name, sha, tuple(scopes), tuple(models), rpm, str(created))
    return out


def load_keys(path: Path) -> dict[str, ApiKey]:
    """Every key in `path` (none when the file does not exist); ConfigError when malformed."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(str(path), "", f"cannot read: {e.strerror}") from None
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), "", f"invalid TOML: {e}") from None
    return _parse(raw, str(path))


class Keyring:
    """The live view of the keys file: re-read when it changes, checked in constant time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: object = object()  # matches no stat: the first refresh reads
        self._keys: dict[str, ApiKey] = {}
        self._error: ConfigError | None = None
        self.refresh()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def refresh(self, force: bool = False) -> None:
        """Re-read the file if it changed since the last read (one stat when it did not)."""
        stamp = self._stat()
        with self._lock:
            if not force and stamp == self._stamp:
                return
            try:
                keys = load_keys(self.path) if stamp is not None else {}
            except ConfigError as e:
                # Fail closed: a broken keys file must not keep a revoked key alive.
                if self._error is None or str(self._error) != str(e):
                    log.error("keys file unusable, refusing authenticated requests: %s", e)
                self._error, self._keys = e, {}
            else:
                if stamp is not None:
                    log.info("keys file read: %d key(s) from %s", len(keys), self.path)
                self._error, self._keys = None, keys
            self._stamp = stamp

    def check(self) -> None:
        """Raise the startup error when the keys file is malformed."""
        self.refresh()
        if self._error is not None:
            raise self._error

    @property
    def keys(self) -> dict[str, ApiKey]:
        self.refresh()
        return dict(self._keys)

    @property
    def empty(self) -> bool:
        """No keys at all (and no broken file): the open loopback mode."""
        self.refresh()
        return not self._keys and self._error is None

    def active(self, key: ApiKey) -> bool:
        """Whether `key` is still in the file unchanged (not revoked); one stat when unchanged."""
        self.refresh()
        return self._error is None and self._keys.get(key.name) == key

    def authenticate(self, token: str | None) -> ApiKey:
        """The key whose hash matches `token`; InvalidAPIKey otherwise."""
        self.refresh()
        if self._error is not None:
            raise ApplianceError(f"the keys file is invalid; fix it: {self._error.message}")
        if not token:
            raise InvalidAPIKey(
                "missing API key: send it as 'Authorization: Bearer TOKEN'"
            )
        digest = hash_token(token)
        found: ApiKey | None = None
        for key in self._keys.values():  # compare against every key: no early exit
            if hmac.compare_digest(key.sha256, digest):
                found = key
        if found is None:
            raise InvalidAPIKey("invalid API key (wrong or revoked)")
        return found


# --- writing (the CLI) -------------------------------------------------------------------


def _read_doc(path: Path) -> tomlkit.TOMLDocument:
    load_keys(path)  # validate before editing: never rewrite a file we do not understand
    try:
        return tomlkit.parse(path.read_text("utf-8"))
    except FileNotFoundError:
        doc = tomlkit.document()
        doc.add(tomlkit.comment("API keys of the appliance: SHA-256 of each token, never the token."))
        doc.add(tomlkit.comment("Edit with `appliance keys create|revoke`; the daemon re-reads this file."))
        return doc


def _write_atomic(path: Path, text: str) -> None:
    # Never world-readable; an installed 0640 root:appliance file stays that way.
    write_atomic(path, text, new_mode=0o600, keep_mask=0o770)


def create_key(
    path: Path,
    name: str,
    *,
    scope: str = INFERENCE,
    models: list[str] | tuple[str, ...] = (),
    rpm: int = 0,
    now: dt.datetime | None = None,
) -> tuple[str, ApiKey]:
    """Add a key named `name`; returns (token, key). The token exists nowhere else."""
    if not NAME_RE.match(name):
        raise UsageError(f"invalid key name {name!r}: letters, digits, '.', '_', '-' (max 64)")
    if scope not in SCOPES:
        raise UsageError(f"invalid scope {scope!r}: one of {', '.join(SCOPES)}")
    if rpm < 0:
        raise UsageError("--rpm must be >= 0 (0 = unlimited)")
    token = new_token()
    created = (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0).isoformat()
    with locked(path):  # read-modify-write: a concurrent create/revoke must not be lost
        doc = _read_doc(path)
        table = doc.get("keys")
        if table is None:
            table = tomlkit.table(is_super_table=True)
            doc["keys"] = table
        if name in table:
            raise UsageError(f"a key named {name!r} exists; revoke it first or pick another name")
        entry = tomlkit.table()
        entry["sha256"] = hash_token(token)
        entry["scopes"] = [scope]
        entry["models"] = list(models)
        entry["rpm"] = rpm
        entry["created"] = created
        table[name] = entry
        _write_atomic(path, tomlkit.dumps(doc))
    return token, ApiKey(name, hash_token(token), (scope,), tuple(models), rpm, created)


def revoke_key(path: Path, name: str) -> None:
    """Remove the key named `name`; its token fails from the daemon's next request on."""
    with locked(path):
        doc = _read_doc(path)
        table = doc.get("keys")
        if table is None or name not in table:
            raise UsageError(f"no key named {name!r} in {path}")
        del table[name]
        _write_atomic(path, tomlkit.dumps(doc))
