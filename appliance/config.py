"""Configuration: `appliance.toml` (the daemon) and `models.toml` (the catalog).

The only place defaults live. Both files are found the same way by the daemon and the CLI
(flag, environment variable, current directory, /etc/appliance, ~/.config/appliance), so an
admin's CLI sees the service's files. Any problem becomes one `ConfigError` naming the file,
the key and the problem.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .units import parse_duration, parse_size
from .validation import error_path, error_text

CONFIG_NAME = "appliance.toml"
MODELS_NAME = "models.toml"
KEYS_NAME = "keys.toml"
SYSTEM_DIR = Path("/etc/appliance")

Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
KeepAlive = Annotated[float, BeforeValidator(lambda v: parse_duration(v, allow_forever=True))]
# TOML has no path type: a path is a string in the file (strict mode would want a Path object).
FilePath = Annotated[Path, Strict(False)]

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SHARD_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


def user_config_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "appliance"


def default_store_path() -> Path:
    """systemd's StateDirectory when run as a service, else the user's data dir."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "appliance"


class _Strict(BaseModel):
    """Unknown keys and wrong TOML types are errors: `pinned = "yes"`, `context = "4096"` or
    `port = 8000.0` would otherwise be coerced silently by pydantic's lax mode."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# --- appliance.toml ---------------------------------------------------------------------


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    tls_cert: FilePath | None = None
    tls_key: FilePath | None = None
    max_body_bytes: Size = 8 * 1024**2
    cors_origins: list[str] = ["http://localhost:*", "http://127.0.0.1:*"]  # any port: local dev servers
    metrics_public: bool = False
    fetch_image_urls: bool = False  # http(s) image_url parts (data: URLs always work)
    max_images: int = Field(8, ge=0)  # per chat request
    max_image_pixels: int = Field(16_777_216, ge=1)  # per image
    drain_timeout: Duration = 30.0
    log_format: Literal["text", "json"] = "text"
    # Connection hygiene (docs/security.md): a client may not hold a socket or a slot for free.
    idle_timeout: Duration = 15.0  # headers must arrive, and an idle keep-alive socket closes, within this
    body_timeout: Duration = 30.0  # reading a request body
    write_timeout: Duration = 30.0  # a streamed response the client stops reading is cancelled
    max_connections: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"  # auto: below the fd limit
    allowed_hosts: list[str] = []  # Host names accepted besides loopback and server.host

    @model_validator(mode="after")
    def _tls_pair(self) -> "ServerConfig":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        return self


class StoreConfig(_Strict):
    path: FilePath = Field(default_factory=default_store_path)
    verify_on_load: bool = False

    @field_validator("path", mode="after")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()


class MemoryConfig(_Strict):
    budget: Literal["auto"] | Size | list[Size] = "auto"
    reserve: Size = 1024**3


class QueueConfig(_Strict):
    max_waiting: int = Field(64, ge=0)
    max_wait: Duration = 120.0
    swap_after: Duration = 2.0

    @model_validator(mode="after")
    def _swap_before_wait(self) -> "QueueConfig":
        if self.swap_after >= self.max_wait:
            raise ValueError("swap_after must be shorter than max_wait")
        return self


class AuthConfig(_Strict):
    keys_file: FilePath | None = None


def _endpoints(v: list[str]) -> list[str]:
    """`rpc` lists: each `host:port`, no repeats (checked here so a typo is a config error)."""
    from .hardware.rpc import parse_endpoint

    for ep in v:
        parse_endpoint(ep)
    if len(set(v)) != len(v):
        raise ValueError("lists a worker twice")
    return v


RpcList = Annotated[list[str], AfterValidator(_endpoints)]


class ClusterConfig(_Strict):
    """RPC workers (`appliance worker`) every model splits its layers over, unless its
    catalog entry names its own `rpc` list."""

    rpc: RpcList = []


class ApplianceConfig(_Strict):
    server: ServerConfig = ServerConfig()
    store: StoreConfig = Field(default_factory=StoreConfig)
    memory: MemoryConfig = MemoryConfig()
    queue: QueueConfig = QueueConfig()
    auth: AuthConfig = AuthConfig()
    cluster: ClusterConfig = ClusterConfig()


# --- models.toml ------------------------------------------------------------------------

# Sampling defaults where a request leaves a setting out and the model's entry sets none:
# OpenAI's where OpenAI defines the setting (temperature, top_p), llama-server's elsewhere.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
DEFAULT_TOP_K = 40
DEFAULT_MIN_P = 0.05
DEFAULT_TYPICAL_P = 1.0
DEFAULT_REPEAT_PENALTY = 1.0
DEFAULT_REPEAT_LAST_N = 64  # -1: the whole context, 0: penalties off


def check_source(v: str) -> str:
    """A model file's location: hf://owner/repo/path.gguf or file:///abs/path.gguf."""
    if v.startswith("hf://"):
        parts = v[len("hf://") :].split("/")
        if len(parts) < 3 or not all(parts):
            raise ValueError(f"hf source must be hf://owner/repo/path.gguf, got {v!r}")
    elif v.startswith("file://"):
        if not v[len("file://") :].startswith("/"):
            raise ValueError(f"file source must be an absolute path file:///abs/path.gguf, got {v!r}")
    else:
        raise ValueError(f"source must start with hf:// or file://, got {v!r}")
    if not v.endswith(".gguf"):
        raise ValueError(f"source must name a .gguf file, got {v!r}")
    return v


class ModelConfig(_Strict):
    source: str
    revision: str = "main"
    sha256: str | list[str] | None = None
    context: int = Field(4096, ge=16)
    parallel: int = Field(4, ge=1, le=256)
    gpu_layers: Literal["all", "auto"] | Annotated[int, Field(ge=0)] = "all"
    gpu: Literal["auto", "split"] | Annotated[int, Field(ge=0)] = "auto"
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] = "f16"
    keep_alive: KeepAlive = 300.0
    pinned: bool = False
    embedding: bool = False
    chat_template: str | None = None
    reasoning: Literal["separate", "inline"] = "separate"  # thinking into reasoning_content, or kept in content
    aliases: list[str] = []
    rpc: RpcList | None = None  # None: the [cluster] list of appliance.toml; []: none
    # Defaults applied when a request leaves them out (Ollama's Modelfile SYSTEM and PARAMETER).
    system: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    stop: list[str] = []
    # A multimodal projector pulled beside the model (`appliance pull` records the repo's).
    mmproj: str | None = None
    mmproj_sha256: str | None = None

    # per-model sampling defaults, used where a request leaves the setting out
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = DEFAULT_TEMPERATURE
    top_k: int = Field(DEFAULT_TOP_K, ge=0)
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = DEFAULT_TOP_P
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] = DEFAULT_MIN_P
    repeat_penalty: Annotated[float, Field(gt=0.0)] = DEFAULT_REPEAT_PENALTY
    # sample inside the compute graph (llama.cpp's backend sampling): "auto" = on a GPU
    backend_sampling: Literal["auto"] | bool = "auto"

    @field_validator("mmproj")
    @classmethod
    def _mmproj(cls, v: str | None) -> str | None:
        return None if v is None else check_source(v)

    @field_validator("mmproj_sha256")
    @classmethod
    def _mmproj_sha(cls, v: str | None) -> str | None:
        if v is not None and not SHA256_RE.match(v):
            raise ValueError(f"not a sha256 (64 lowercase hex digits): {v!r}")
        return v

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return check_source(v)

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | list[str] | None, info: ValidationInfo) -> str | list[str] | None:
        for h in [v] if isinstance(v, str) else v or []:
            if not SHA256_RE.match(h):
                raise ValueError(f"not a sha256 (64 lowercase hex digits): {h!r}")
        # A field validator (not a model validator) so the error names the `sha256` key.
        source = info.data.get("source")
        if source is not None and v is not None:
            m = SHARD_RE.search(source)
            n = int(m.group(2)) if m else 1
            if isinstance(v, list) and len(v) != n:
                raise ValueError(f"lists {len(v)} checksum(s) but the source has {n} shard(s)")
            if isinstance(v, str) and n != 1:
                raise ValueError(f"the source has {n} shards: give a list of {n} checksums in shard order")
        return v

    @property
    def shard_count(self) -> int:
        m = SHARD_RE.search(self.source)
        return int(m.group(2)) if m else 1

    @property
    def shard_sources(self) -> list[str]:
        """Every shard's source in order (just `source` for a single file)."""
        m = SHARD_RE.search(self.source)
        if not m:
            return [self.source]
        stem = self.source[: m.start()]
        n = int(m.group(2))
        return [f"{stem}-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]

    @property
    def pinned_sha256(self) -> list[str | None]:
        """The pinned checksum of each shard, None where the catalog pins none."""
        if isinstance(self.sha256, list):
            return list(self.sha256)
        if isinstance(self.sha256, str):
            if self.shard_count != 1:
                return [None] * self.shard_count  # rejected in validation; defensive
            return [self.sha256]
        return [None] * self.shard_count


@dataclass(frozen=True)
class Catalog:
    """Model ids and aliases from models.toml; `path` is where edits are written."""

    models: dict[str, ModelConfig]
    path: Path
    exists: bool = True

    def resolve(self, name: str) -> tuple[str, ModelConfig] | None:
        if name in self.models:
            return name, self.models[name]
        for mid, m in self.models.items():
            if name in m.aliases:
                return mid, m
        return None


@dataclass(frozen=True)
class Settings:
    """Everything the daemon and the CLI read from files and the environment."""

    config: ApplianceConfig
    catalog: Catalog
    config_path: Path | None
    keys_path: Path
    env_overrides: dict[str, str] = field(default_factory=dict)


# --- finding and loading ------------------------------------------------------------------


def find_file(name: str, flag: str | os.PathLike[str] | None, env_var: str, env: Mapping[str, str]) -> Path | None:
    """Flag, then environment variable, then ./, /etc/appliance/, ~/.config/appliance/."""
    for explicit, origin in ((flag, "command line"), (env.get(env_var), env_var)):
        if explicit:
            p = Path(explicit).expanduser()
            if not p.is_file():
                raise ConfigError(str(p), "", f"file not found (given by {origin})")
            return p
    for d in (Path.cwd(), SYSTEM_DIR, user_config_dir()):
        p = d / name
        if p.is_file():
            return p
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        key = ""
        m = re.search(r"Cannot (?:declare|overwrite) \('?([^')]+)", str(e))
        if m:
            key = m.group(1).strip("'")
        raise ConfigError(str(path), key, f"invalid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(str(path), "", f"cannot read: {e.strerror}") from None


def _first_error(e: ValidationError, prefix: tuple[str, ...] = ()) -> tuple[str, str]:
    err = e.errors()[0]
    msg = "unknown key" if err["type"] == "extra_forbidden" else error_text(err)
    return error_path(err["loc"], prefix), msg


def _env_int(var: str, value: str) -> int:
    """Environment values are strings; the typed config takes only a real int for a port."""
    try:
        return int(value.strip())
    except ValueError:
        raise ConfigError(f"environment {var}", "server.port", f"not an integer: {value!r}") from None


ENV_OVERRIDES: dict[str, tuple[str, str, Callable[[str, str], object]]] = {
    "APPLIANCE_HOST": ("server", "host", lambda _var, v: v),
    "APPLIANCE_PORT": ("server", "port", _env_int),
    "APPLIANCE_STORE": ("store", "path", lambda _var, v: v),
}


def load_config(path: Path | None, env: Mapping[str, str]) -> tuple[ApplianceConfig, dict[str, str]]:
    raw: dict[str, Any] = _read_toml(path) if path else {}
    applied: dict[str, str] = {}
    for var, (section, key, convert) in ENV_OVERRIDES.items():
        if env.get(var):
            sect = raw.setdefault(section, {})
            if not isinstance(sect, dict):
                break  # the file's own error is reported below
            sect[key] = convert(var, env[var])
            applied[f"{section}.{key}"] = var
    try:
        return ApplianceConfig.model_validate(raw), applied
    except ValidationError as e:
        key, msg = _first_error(e)
        origin = next((f"environment {v}" for k, v in applied.items() if key.startswith(k)), None)
        raise ConfigError(origin or str(path or CONFIG_NAME), key, msg) from None


def parse_catalog(raw: Mapping[str, Any], file: str) -> dict[str, ModelConfig]:
    models: dict[str, ModelConfig] = {}
    for mid, body in raw.items():
        if not isinstance(body, dict):
            raise ConfigError(file, mid, "each model must be a table ([model-id])")
        if "source" not in body and body and all(isinstance(v, dict) for v in body.values()):
            dotted = f"{mid}.{next(iter(body))}"  # [qwen2.5-7b] is table "5-7b" inside "qwen2"
            raise ConfigError(file, mid, f'no source; a dot in a bare table name nests tables: for the id '
                              f'{dotted!r} quote it, ["{dotted}"]')
        try:
            models[mid] = ModelConfig.model_validate(body)
        except ValidationError as e:
            key, msg = _first_error(e, (mid,))
            raise ConfigError(file, key, msg) from None
    seen: dict[str, str] = {mid: mid for mid in models}
    for mid, m in models.items():
        for i, alias in enumerate(m.aliases):
            if alias in seen:
                other = seen[alias]
                what = "a model id" if alias == other else f"already an alias of {other!r}"
                raise ConfigError(file, f"{mid}.aliases[{i}]", f"duplicate alias {alias!r}: {what}")
            seen[alias] = mid
    return models


def load_catalog(path: Path | None) -> Catalog:
    if path is None:
        return Catalog({}, user_config_dir() / MODELS_NAME, exists=False)
    return Catalog(parse_catalog(_read_toml(path), str(path)), path)


def load_settings(
    config: str | os.PathLike[str] | None = None,
    models: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Find, read and validate both files; raise ConfigError on the first problem."""
    env = os.environ if env is None else env
    config_path = find_file(CONFIG_NAME, config, "APPLIANCE_CONFIG", env)
    models_path = find_file(MODELS_NAME, models, "APPLIANCE_MODELS", env)
    cfg, applied = load_config(config_path, env)
    catalog = load_catalog(models_path)
    keys = cfg.auth.keys_file
    if keys is None:
        keys = (config_path.parent if config_path else user_config_dir()) / KEYS_NAME
    elif not keys.is_absolute() and config_path:
        keys = config_path.parent / keys
    return Settings(cfg, catalog, config_path, keys.expanduser(), applied)
