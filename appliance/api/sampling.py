"""The engine's SamplingParams from the request fields chat and completions share."""

from __future__ import annotations

from typing import Any

from ..engine.types import SamplingParams
from .schemas import _Sampling


def sampling_params(body: _Sampling, **extra: Any) -> SamplingParams:
    """Unset optional fields keep the engine's defaults; `extra` adds endpoint-specific ones."""
    kw: dict[str, Any] = {
        "max_tokens": body.max_tokens,
        "stop": body.stops,
        "seed": body.seed,
        "logit_bias": body.bias,
        "n": body.n,
    }
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = getattr(body, name)
        if value is not None:
            kw[name] = value
    kw.update(extra)
    return SamplingParams(**kw)
