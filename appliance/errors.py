"""Named errors of the appliance.

Every failure a user can see is one of these classes. The HTTP layer maps them to
OpenAI's error shape through `status`, `type` and `code` (in one place: api/errors.py),
and the CLI maps them to exit codes through `exit_code`.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Base class: a message for humans plus the fields OpenAI's error shape needs."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"
    exit_code: int = 1

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after


# --- configuration and usage (CLI exit 2) -------------------------------------------


class ConfigError(ApplianceError):
    """Invalid configuration: names the file, the key and the problem in one line."""

    exit_code = 2

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file, self.key, self.problem = file, key, problem
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {problem}")


class UsageError(ApplianceError):
    """The command line asked for something that cannot be done as asked."""

    exit_code = 2


class ListenError(ApplianceError):
    """The daemon cannot open its listening socket as configured (bad or foreign address,
    privileged port): exit 2, so systemd does not restart it in a loop."""

    exit_code = 2

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host, self.port, self.reason = host, port, reason
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(f"cannot listen on {where}: {reason}")


class AddressInUse(ListenError):
    """Another process holds the port: exit 1, a failure that a later restart may get past
    (e.g. the previous instance still shutting down)."""

    exit_code = 1


# --- store and downloads (CLI exit 1) -------------------------------------------------


class StoreError(ApplianceError):
    """A store operation failed; the store is left as it was."""


class ChecksumMismatch(StoreError):
    """The bytes hash to another sha256 than the pinned one (a pull, or a stored blob
    re-hashed by `verify_on_load`): a bad source or a damaged file, not a request error."""

    status, type, code = 502, "server_error", "checksum_mismatch"

    def __init__(self, what: str, expected: str, got: str) -> None:
        self.expected, self.got = expected, got
        super().__init__(f"checksum mismatch for {what}: expected sha256 {expected}, got {got}")


class DownloadError(StoreError):
    """The source could not be fetched (network, hub, missing file)."""

    status, type, code = 502, "server_error", "download_failed"


class DownloadInterrupted(DownloadError):
    """The connection dropped mid-body; the partial file is kept for a resume."""

    def __init__(self, message: str, *, fetched: int = 0) -> None:
        super().__init__(message)
        self.fetched = fetched


class NotGGUF(StoreError):
    """The file is not a GGUF model (wrong magic, unsupported version, or cut short):
    refused before it enters the store."""

    status, type, code = 502, "server_error", "not_gguf"


class OfflineError(DownloadError):
    """HF_HUB_OFFLINE is set and the file is not available locally."""


class InsufficientDisk(StoreError):
    def __init__(self, path: str, need: int, free: int) -> None:
        self.need, self.free = need, free
        super().__init__(
            f"not enough disk space in {path}: need {need} bytes, {free} free"
        )


class StoreBusy(StoreError):
    """Another process holds the lock for this model."""


class ModelInUse(StoreError):
    """The model is loaded in the running daemon."""


class BundleError(StoreError):
    """An offline bundle is malformed, tampered with or untrusted."""


# --- HTTP request errors ----------------------------------------------------------------


class InvalidRequest(ApplianceError):
    status, type, code = 400, "invalid_request_error", "invalid_value"


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class InvalidAPIKey(ApplianceError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


class InsufficientScope(ApplianceError):
    status, type, code = 403, "permission_error", "insufficient_scope"


class ModelNotAllowed(ApplianceError):
    status, type, code = 403, "permission_error", "model_not_allowed"


class ModelNotFound(ApplianceError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class NotFound(ApplianceError):
    status, type, code = 404, "invalid_request_error", "not_found"


class MethodNotAllowed(ApplianceError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"


class RequestTooLarge(ApplianceError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class RequestTimeout(ApplianceError):
    """The client did not send its request body within server.body_timeout."""

    status, type, code = 408, "invalid_request_error", "request_timeout"


class MisdirectedRequest(ApplianceError):
    """The Host header names no name this server answers to (DNS rebinding)."""

    status, type, code = 421, "invalid_request_error", "misdirected_request"


class CrossSiteRequest(ApplianceError):
    """A browser on another site tried to change state (CSRF)."""

    status, type, code = 403, "permission_error", "cross_site_request"


class QueueFull(ApplianceError):
    status, type, code = 429, "rate_limit_error", "queue_full"


class RateLimitExceeded(ApplianceError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class Draining(ApplianceError):
    status, type, code = 503, "server_error", "draining"


class NotReady(ApplianceError):
    status, type, code = 503, "server_error", "not_ready"


class QueueTimeout(ApplianceError):
    status, type, code = 503, "server_error", "queue_timeout"


class InsufficientMemory(ApplianceError):
    status, type, code = 503, "server_error", "insufficient_memory"


class BudgetExceeded(ApplianceError):
    """Resident models are charged more than a device's fixed budget: a scheduling bug,
    found by the invariant check after every decision (scheduler/memory.py)."""


class EngineError(ApplianceError):
    """llama.cpp failed for one request (e.g. KV exhaustion); others go on."""

    status, type, code = 500, "server_error", "internal_error"


class WorkerUnreachable(ApplianceError):
    """An RPC worker (`rpc` in models.toml) did not answer: the model that needs it stays
    unloaded; it loads again once the worker is back (hence 503 with Retry-After)."""

    status, type, code = 503, "server_error", "worker_unreachable"

    def __init__(self, endpoint: str, reason: str) -> None:
        self.endpoint = endpoint
        super().__init__(f"RPC worker {endpoint} is unreachable: {reason}", retry_after=5.0)


class WorkerLost(ApplianceError):
    """An RPC worker died while a model split over it was computing: that model's requests
    fail, it is unloaded, and it loads again once the worker is back."""

    status, type, code = 503, "server_error", "worker_lost"

    def __init__(self, endpoint: str, model: str) -> None:
        self.endpoint = endpoint
        super().__init__(f"RPC worker {endpoint} was lost while model {model!r} was computing; the model "
                         "is unloaded and loads again once the worker is back", retry_after=5.0)


# --- the daemon's admin socket (CLI exit 1) -----------------------------------------------


class DaemonUnreachable(ApplianceError):
    """The daemon's admin socket refused us (permissions) or broke before answering."""


class AdminRequestFailed(ApplianceError):
    """The daemon answered an admin-socket request with an error (`code` says which)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- appliance bench (CLI exit 1) ---------------------------------------------------------


class BenchError(ApplianceError):
    """A server under `appliance bench` could not be measured (unreachable, refused the
    warm-up request, or failed requests while measuring)."""
