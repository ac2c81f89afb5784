"""A GGUF's metadata and tensor table without its token arrays.

`gguf.GGUFReader` builds a numpy view for every element of every array, which over Gemma 3's
262k-token vocabulary (three arrays of 262k) took 8-14 s on a 2-core machine. What the
estimator and `appliance ls` need is the scalars, a few small per-layer arrays and the
tensor table; of the token arrays, only their length. This reader walks the file format
(documented in ggml's docs/gguf.md, the type tables from the `gguf` package) and keeps, for
an array longer than `MAX_ARRAY`, only its length: numeric arrays are skipped by arithmetic,
string arrays by hopping over each length-prefixed string without decoding it.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import gguf

from ..errors import NotGGUF

MAX_ARRAY = 4096  # longer arrays (token lists, scores, merges) keep only their length
_SCALAR = {
    gguf.GGUFValueType.UINT8: "B", gguf.GGUFValueType.INT8: "b",
    gguf.GGUFValueType.UINT16: "H", gguf.GGUFValueType.INT16: "h",
    gguf.GGUFValueType.UINT32: "I", gguf.GGUFValueType.INT32: "i",
    gguf.GGUFValueType.FLOAT32: "f", gguf.GGUFValueType.BOOL: "?",
    gguf.GGUFValueType.UINT64: "Q", gguf.GGUFValueType.INT64: "q",
    gguf.GGUFValueType.FLOAT64: "d",
}


@dataclass(frozen=True)
class ArrayLen:
    """A long array's place holder: its element type and length, not its contents."""

    type: gguf.GGUFValueType
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type: int  # ggml type
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class GGUFMeta:
    fields: dict[str, Any]  # scalars, str, tuples for short arrays, ArrayLen for long ones
    tensors: list[TensorInfo]

    def get(self, key: str) -> Any:
        return self.fields.get(key)

    def array_len(self, key: str) -> int | None:
        v = self.fields.get(key)
        return v.length if isinstance(v, ArrayLen) else len(v) if isinstance(v, tuple) else None


class _Cursor:
    def __init__(self, buf: mmap.mmap, path: str) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def unpack(self, fmt: str) -> Any:
        try:
            v = struct.unpack_from("<" + fmt, self.buf, self.pos)
        except struct.error:
            raise NotGGUF(f"{self.path}: not a GGUF file (truncated header)") from None
        self.pos += struct.calcsize("<" + fmt)
        return v[0] if len(v) == 1 else v

    def string(self) -> str:
        n = self.unpack("Q")
        if self.pos + n > len(self.buf):
            raise NotGGUF(f"{self.path}: not a GGUF file (truncated header)")
        s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def skip_strings(self, count: int) -> None:
        buf, pos, unpack = self.buf, self.pos, struct.unpack_from
        end = len(buf)
        for _ in range(count):
            if pos + 8 > end:
                raise NotGGUF(f"{self.path}: not a GGUF file (truncated header)")
            pos += 8 + unpack("<Q", buf, pos)[0]
        self.pos = pos

    def value(self, vtype: int) -> Any:
        t = gguf.GGUFValueType(vtype)
        if t == gguf.GGUFValueType.STRING:
            return self.string()
        if t == gguf.GGUFValueType.ARRAY:
            sub, n = gguf.GGUFValueType(self.unpack("I")), self.unpack("Q")
            if n > MAX_ARRAY:
                if sub == gguf.GGUFValueType.STRING:
                    self.skip_strings(n)
                elif sub in _SCALAR:
                    self.pos += n * struct.calcsize(_SCALAR[sub])
                else:
                    for _ in range(n):
                        self.value(sub)
                return ArrayLen(sub, n)
            return tuple(self.value(sub) for _ in range(n))
        if t in _SCALAR:
            return self.unpack(_SCALAR[t])
        raise NotGGUF(f"{self.path}: not a GGUF file (unknown value type {vtype})")


def read_meta(path: str | os.PathLike[str]) -> GGUFMeta:
    """Metadata and tensor table of one GGUF file (one shard of a split model)."""
    p = os.fspath(path)
    with open(p, "rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty file
            raise NotGGUF(f"{p}: not a GGUF file (empty)") from None
    with buf:
        c = _Cursor(buf, p)
        if len(buf) < 4 or buf[:4] != b"GGUF":
            raise NotGGUF(f"{p}: not a GGUF file (no GGUF magic at the start)")
        c.pos = 4
        version = c.unpack("I")
        if version not in (2, 3):
            raise NotGGUF(f"{p}: unsupported GGUF version {version}")
        n_tensors, n_kv = c.unpack("Q"), c.unpack("Q")
        fields: dict[str, Any] = {}
        try:
            for _ in range(n_kv):
                key = c.string()
                fields[key] = c.value(c.unpack("I"))
            tensors = []
            for _ in range(n_tensors):
                name = c.string()
                dims = tuple(c.unpack("Q") for _ in range(c.unpack("I")))
                ttype = c.unpack("I")
                c.unpack("Q")  # offset in the data section
                tensors.append(_tensor(name, dims, ttype, p))
        except ValueError as e:  # an enum value the format does not know
            raise NotGGUF(f"{p}: not a GGUF file ({e})") from None
    return GGUFMeta(fields, tensors)


def _tensor(name: str, dims: tuple[int, ...], ttype: int, path: str) -> TensorInfo:
    n = 1
    for d in dims:
        n *= d
    try:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ttype)]
    except (ValueError, KeyError):
        raise NotGGUF(f"{path}: tensor {name!r} has unknown ggml type {ttype}") from None
    return TensorInfo(name, dims, ttype, n, n // block * size)


def check_gguf(path: str | os.PathLike[str], what: str | None = None) -> None:
    """Refuse a file that is not a readable GGUF (NotGGUF naming `what`), before it enters
    the store: otherwise it would list as verified and fail at its first load."""
    try:
        read_meta(path)
    except NotGGUF as e:
        if what is None or what == os.fspath(path):
            raise
        raise NotGGUF(e.message.replace(os.fspath(path), what, 1)) from None
    except OSError as e:
        raise NotGGUF(f"{what or os.fspath(path)}: cannot read: {e.strerror}") from None
