"""Human sizes ("8 MiB") and durations ("5m", "forever") as config values.

Sizes become bytes (int), durations become seconds (float; `math.inf` for "forever").
"""

from __future__ import annotations

import math
import re

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(value: object) -> int:
    """Bytes from an int or a string such as "1GiB", "8 MiB", "512MB"."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like '1GiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ValueError(f"invalid size {value!r} (use bytes or e.g. '512MiB', '1GiB', '2GB')")


def parse_duration(value: object, *, allow_forever: bool = False) -> float:
    """Seconds from a number or a string such as "30s", "5m", "1h30m", "250ms", "0"."""
    if isinstance(value, bool):
        raise ValueError("a duration must be seconds or a string like '30s'")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if allow_forever and text in ("forever", "-1", "inf"):
            return math.inf
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return float(text)
        if text and _DURATION_PART.sub("", text) == "":
            return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
    extra = ", or 'forever'" if allow_forever else ""
    raise ValueError(f"invalid duration {value!r} (use e.g. '30s', '5m', '1h30m', '0'{extra})")


def format_size(n: int | float) -> str:
    """Short human form for tables and messages: 1.5 GiB, 248 MiB."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{int(n)} B"


def format_duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "forever"
    return f"{seconds:g}s"
