"""Refusing bad requests before anything reaches llama.cpp (some inputs would abort it).

Runs on the event loop when a request is submitted: sampling settings in range, token ids
inside the vocabulary, prompt (plus `max_tokens`) within one slot's context. Every refusal
is an `InvalidRequest` or `ContextLengthExceeded` naming the offending parameter.
"""

from __future__ import annotations

import math
from typing import Sequence

from ..errors import ContextLengthExceeded, InvalidRequest
from .types import GenerationRequest, SamplingParams
from .vocab import Vocab

MAX_TOP_LOGPROBS = 20


def check_params(p: SamplingParams, *, parallel: int, n_vocab: int) -> None:
    if p.n < 1:
        raise InvalidRequest("n must be at least 1", param="n")
    if p.n > parallel:
        raise InvalidRequest(f"n must be at most {parallel} for this model (its parallel slots)", param="n")
    if p.max_tokens is not None and p.max_tokens < 1:
        raise InvalidRequest("max_tokens must be at least 1", param="max_tokens")
    if not (p.temperature >= 0 and math.isfinite(p.temperature)):
        raise InvalidRequest("temperature must be >= 0", param="temperature")
    if not (0 < p.top_p <= 1):
        raise InvalidRequest("top_p must be in (0, 1]", param="top_p")
    if p.top_k < 0:
        raise InvalidRequest("top_k must be >= 0", param="top_k")
    if not (0 <= p.min_p <= 1):
        raise InvalidRequest("min_p must be in [0, 1]", param="min_p")
    if not (0 < p.typical_p <= 1):
        raise InvalidRequest("typical_p must be in (0, 1]", param="typical_p")
    if p.repeat_last_n < -1:
        raise InvalidRequest("repeat_last_n must be >= -1", param="repeat_last_n")
    if not (p.repeat_penalty > 0 and math.isfinite(p.repeat_penalty)):
        raise InvalidRequest("repeat_penalty must be > 0", param="repeat_penalty")
    for name, value in (("presence_penalty", p.presence_penalty), ("frequency_penalty", p.frequency_penalty)):
        if not math.isfinite(value):
            raise InvalidRequest(f"{name} must be finite", param=name)
    if not (0 <= p.top_logprobs <= MAX_TOP_LOGPROBS):
        raise InvalidRequest(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]", param="top_logprobs")
    check_ids(list(p.logit_bias), n_vocab, "logit_bias")
    for v in p.logit_bias.values():
        if math.isnan(v):
            raise InvalidRequest("logit_bias values must be numbers", param="logit_bias")


def check_ids(ids: Sequence[int], n_vocab: int, param: str) -> None:
    for t in ids:
        if not (0 <= int(t) < n_vocab):
            raise InvalidRequest(f"token id {t} is out of range for this model's vocabulary (0..{n_vocab - 1})",
                                 param=param)


def prompt_tokens(vocab: Vocab, req: GenerationRequest, context: int) -> list[int]:
    """The request's prompt as token ids, refused when empty or when it leaves no room to
    generate within `context`."""
    if isinstance(req.prompt, str):
        refuse_hopeless(vocab, req.prompt, context)
        prompt = vocab.tokenize(req.prompt, add_special=req.add_special, parse_special=True)
    else:
        prompt = [int(t) for t in req.prompt]
        check_ids(prompt, vocab.n_vocab, "prompt")
    return check_length(prompt, context)


def check_length(prompt: list[int], context: int) -> list[int]:
    """`prompt`, refused when empty or when it leaves no room to generate within `context`."""
    if not prompt:
        raise InvalidRequest("the prompt is empty", param="prompt")
    if len(prompt) >= context:
        raise ContextLengthExceeded(
            f"the prompt has {len(prompt)} tokens; this model's context is {context} tokens",
            param="prompt",
        )
    return prompt


def max_new_tokens(p: SamplingParams, prompt_len: int, context: int) -> int:
    """How many tokens a choice may generate: `max_tokens`, refused when it does not fit, or
    the rest of the slot's context."""
    room = context - prompt_len
    if p.max_tokens is not None and p.max_tokens > room:
        raise ContextLengthExceeded(
            f"the prompt ({prompt_len} tokens) plus max_tokens ({p.max_tokens}) exceeds "
            f"this model's context of {context} tokens",
            param="max_tokens",
        )
    return p.max_tokens if p.max_tokens is not None else room


def refuse_hopeless(vocab: Vocab, text: str, context: int) -> None:
    """Refuse, without tokenizing, a string prompt too long to fit whatever it tokenizes to:
    tokenizing megabytes runs on the event loop and would stall every stream. Safe: a prompt
    that fits has fewer than `context` tokens, each covering at most `max_chars_per_token`
    characters (see Vocab), so it has fewer than context * max_chars_per_token characters."""
    per_token = vocab.max_chars_per_token
    if per_token is not None and len(text) > context * per_token:
        raise ContextLengthExceeded(
            f"the prompt has {len(text)} characters, more than this model's context of "
            f"{context} tokens can hold",
            param="prompt",
        )
