"""The engine's contract with its callers (scheduler, HTTP layer), free of HTTP and llama.cpp.

A caller builds a `GenerationRequest`, hands it to `Runner.generate()` and iterates the
returned `Generation` (an async iterator of `Delta`s). Closing the iteration early (or
`await generation.aclose()`) cancels the request: its slots are freed at the next step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Mapping

if TYPE_CHECKING:
    from .vision import VisionPrompt

FinishReason = Literal["stop", "length"]  # failures raise EngineError; "tool_calls" is the API's


@dataclass(frozen=True)
class SamplingParams:
    """One request's sampling settings. These defaults switch every filter off (the engine's
    neutral chain); the HTTP layer fills in the model's defaults (config.py, docs/api.md)."""

    max_tokens: int | None = None  # None: until the slot's context is full
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    typical_p: float = 1.0  # 1 = off
    seed: int | None = None  # None: random
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64  # tokens the penalties look back over; -1 the whole context, 0 off
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0
    n: int = 1  # choices decoded from one prompt, each in its own slot
    # A compiled grammar (engine.guidance.Constraint: json_object, json_schema, tool calls,
    # GBNF or Lark): masks computed beside the decode, one matcher per choice.
    constraint: object | None = field(default=None, compare=False)
    ignore_eos: bool = False
    preserved: tuple[str, ...] = ()  # special tokens whose text stays in the output (tool-call markers)


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str | list[int]
    params: SamplingParams = SamplingParams()
    add_special: bool = True  # add BOS; False for chat prompts whose template already has it
    request_id: str = ""
    images: tuple[bytes, ...] = ()  # encoded images, one per vision.MARKER in `prompt` (a str)
    vision: VisionPrompt | None = None  # the same, already tokenized (Runner.tokenize_images)


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: list[int]


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int]
    top: list[TopLogprob]


@dataclass(frozen=True)
class Delta:
    """New output of one choice: whole UTF-8 characters, never a prefix of a stop string."""

    index: int  # choice index, 0..n-1
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None  # set on the choice's last delta only
    token_ids: tuple[int, ...] = ()  # the tokens sampled for this delta (text may lag behind)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from a slot's cache
    ttft_s: float | None = None  # time to first token
    decode_tokens_per_s: float | None = None
    prompt_eval_tokens: int = 0  # prompt tokens actually evaluated (prompt - cached, at least 1)


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: list[list[float]]  # normalized, one per input
    prompt_tokens: int
