"""The engine's SamplingParams from the request fields chat and completions share."""

from __future__ import annotations

from typing import Any

from ..config import DEFAULT_REPEAT_LAST_N, DEFAULT_TYPICAL_P, ModelConfig
from ..engine.types import SamplingParams
from .schemas import _Sampling


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def sampling_params(body: _Sampling, cfg: ModelConfig, **extra: Any) -> SamplingParams:
    """A setting the request leaves out (or sends as null) takes the model's default from
    models.toml (config.py holds the built-in ones); `extra` adds endpoint-specific fields."""
    kw: dict[str, Any] = {
        "max_tokens": body.max_tokens,
        "stop": body.stops,
        "seed": body.seed,
        "logit_bias": body.bias,
        "n": body.n,
        "temperature": _pick(body.temperature, cfg.temperature),
        "top_p": _pick(body.top_p, cfg.top_p),
        "top_k": _pick(body.top_k, cfg.top_k),
        "min_p": _pick(body.min_p, cfg.min_p),
        "typical_p": _pick(body.typical_p, DEFAULT_TYPICAL_P),
        "repeat_penalty": _pick(body.repeat_penalty, cfg.repeat_penalty),
        "repeat_last_n": _pick(body.repeat_last_n, DEFAULT_REPEAT_LAST_N),
    }
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(body, name)
        if value is not None:
            kw[name] = value
    kw.update(extra)
    return SamplingParams(**kw)
