"""Driving one engine Generation from a handler: pull the first delta before any header is
sent (so early failures are real HTTP errors), and always close the Generation so the
engine frees its slots, whether the request finished, failed or the client went away."""

from __future__ import annotations

from typing import Any

from ..engine.types import Delta, SamplingParams, TokenLogprob, Usage
from ..errors import ApplianceError, EngineError
from .schemas import _Sampling


def sampling_params(body: _Sampling, **extra: Any) -> SamplingParams:
    """The engine's SamplingParams from the fields chat and completions share."""
    kw: dict[str, Any] = {
        "max_tokens": body.max_tokens,
        "stop": body.stops,
        "seed": body.seed,
        "logit_bias": body.bias,
        "n": body.n,
    }
    if body.temperature is not None:
        kw["temperature"] = body.temperature
    if body.top_p is not None:
        kw["top_p"] = body.top_p
    if body.presence_penalty is not None:
        kw["presence_penalty"] = body.presence_penalty
    if body.frequency_penalty is not None:
        kw["frequency_penalty"] = body.frequency_penalty
    kw.update(extra)
    return SamplingParams(**kw)


def checked(d: Delta) -> Delta:
    """A delta that reports an engine failure becomes an EngineError."""
    if d.finish_reason == "error":
        raise EngineError(d.error or "generation failed in the engine")
    return d


async def next_delta(gen: Any) -> Delta | None:
    """The next delta or None at the end; engine failures raise ApplianceError."""
    try:
        d = await gen.__anext__()
    except StopAsyncIteration:
        return None
    except ApplianceError:
        raise
    except Exception as e:  # anything else from the engine is a 500 with a message
        raise EngineError(f"generation failed: {e}") from e
    return checked(d)


async def close(gen: Any, info: dict[str, Any] | None = None) -> None:
    """Cancel the Generation if it is still running; a request cut short (client gone,
    error) still counts what it cost in `info` (log line, usage and token metrics)."""
    if info is not None and not getattr(gen, "finished", True):
        delivered = getattr(gen, "delivered", None)
        if delivered is not None:
            note_usage(info, delivered)
    aclose = getattr(gen, "aclose", None)
    if aclose is not None:
        await aclose()


def chat_logprobs(items: list[TokenLogprob]) -> list[dict[str, Any]]:
    return [
        {
            "token": lp.token,
            "logprob": lp.logprob,
            "bytes": list(lp.bytes),
            "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in lp.top],
        }
        for lp in items
    ]


def completion_logprobs(items: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """Legacy completions' column-wise logprobs; `offset` is where this text starts."""
    offsets = []
    pos = offset
    for lp in items:
        offsets.append(pos)
        pos += len(lp.token)
    return {
        "tokens": [lp.token for lp in items],
        "token_logprobs": [lp.logprob for lp in items],
        "top_logprobs": [{t.token: t.logprob for t in lp.top} for lp in items],
        "text_offset": offsets,
    }


def note_usage(info: dict[str, Any], u: Usage) -> None:
    """Add one Generation's usage to the request's facts (log line, metrics hooks). A request
    with several prompts keeps the first TTFT (the client waited for that one) and the last rate."""
    info["prompt_tokens"] += u.prompt_tokens
    info["completion_tokens"] += u.completion_tokens
    if info.get("ttft_s") is None and u.ttft_s is not None:
        info["ttft_s"] = u.ttft_s
    if u.decode_tokens_per_s:
        info["decode_tokens_per_s"] = u.decode_tokens_per_s


def usage_dict(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    u: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    return u
