"""The verified model store: blobs, records, downloads, providers, GGUF header reading."""

from .core import ModelState, State, Store
from .download import PullResult, pull_model
from .ggufinfo import GGUFInfo, read_gguf_info
from .providers import Provider, PythonPackageProvider, default_providers
from .records import BlobRef, ModelRecord

__all__ = [
    "BlobRef", "GGUFInfo", "ModelRecord", "ModelState", "Provider", "PullResult",
    "PythonPackageProvider", "State", "Store", "default_providers", "pull_model", "read_gguf_info",
]
