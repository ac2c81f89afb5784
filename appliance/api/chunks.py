"""OpenAI's response and stream-chunk shapes for chat and completions, as pure functions.

Everything a client parses is built here from plain values, so the shapes are tested without a
server: the same id, created and model in every chunk of a response (`Head`); `usage: null` in
every chunk when the client asked for usage, and one last chunk with no choices that carries it.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from ..engine.types import TokenLogprob, Usage

Chunk = dict[str, Any]

CHAT_CHUNK = "chat.completion.chunk"
TEXT_COMPLETION = "text_completion"  # legacy completions use one object name for both


@dataclass(frozen=True)
class Head:
    """What every chunk of one response repeats."""

    id: str
    object: str  # the chunk object name
    created: int
    model: str
    include_usage: bool = False  # stream_options.include_usage: `usage: null` in each chunk

    @classmethod
    def new(cls, kind: Literal["chat", "completion"], model: str, include_usage: bool = False) -> Head:
        if kind == "chat":
            return cls("chatcmpl-" + secrets.token_hex(12), CHAT_CHUNK, int(time.time()), model, include_usage)
        return cls("cmpl-" + secrets.token_hex(12), TEXT_COMPLETION, int(time.time()), model, include_usage)

    def chunk(self, choice: dict[str, Any]) -> Chunk:
        c: Chunk = {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                    "choices": [choice]}
        if self.include_usage:
            c["usage"] = None
        return c

    def usage_chunk(self, usage: Usage) -> Chunk:
        """The last chunk with include_usage: no choices, the whole request's usage."""
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "choices": [], "usage": usage_dict(usage)}


def usage_dict(u: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                           "total_tokens": u.prompt_tokens + u.completion_tokens}
    if u.cached_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": u.cached_tokens}
    return out


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


def completion_logprobs(items: list[TokenLogprob], offset: int, first_null: bool = False) -> dict[str, Any]:
    """Legacy completions' column-wise logprobs; `offset` is where this text starts.
    `first_null`: the first item is an echoed prompt's first token, which has no logprob."""
    offsets = []
    pos = offset
    for lp in items:
        offsets.append(pos)
        pos += len(lp.token)
    out: dict[str, Any] = {
        "tokens": [lp.token for lp in items],
        "token_logprobs": [lp.logprob for lp in items],
        "top_logprobs": [{t.token: t.logprob for t in lp.top} for lp in items],
        "text_offset": offsets,
    }
    if first_null and items:
        out["token_logprobs"][0] = out["top_logprobs"][0] = None
    return out


# --- chat ---------------------------------------------------------------------------------


def chat_delta(head: Head, index: int, delta: dict[str, Any], finish: str | None = None,
               logprobs: list[TokenLogprob] | None = None) -> Chunk:
    """One chat chunk; `logprobs` None: the client did not ask for them."""
    return head.chunk({"index": index, "delta": delta,
                       "logprobs": None if logprobs is None else {"content": chat_logprobs(logprobs)},
                       "finish_reason": finish})


def tool_call_ids(calls: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Parsed (name, arguments) pairs as OpenAI's tool calls, each with a fresh id."""
    return [
        {"id": "call_" + secrets.token_hex(12), "type": "function", "function": {"name": name, "arguments": args}}
        for name, args in calls
    ]


def chat_choice(index: int, content: str, calls: list[dict[str, Any]], finish: str,
                logprobs: list[TokenLogprob] | None) -> dict[str, Any]:
    """One choice of a whole (non-streamed) chat response."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
        message["content"] = content or None
    return {"index": index, "message": message,
            "logprobs": None if logprobs is None else {"content": chat_logprobs(logprobs)},
            "finish_reason": finish}


def chat_response(head: Head, choices: list[dict[str, Any]], usage: Usage) -> dict[str, Any]:
    return {"id": head.id, "object": "chat.completion", "created": head.created, "model": head.model,
            "choices": choices, "usage": usage_dict(usage)}


# --- completions --------------------------------------------------------------------------


def completion_chunk(head: Head, index: int, text: str, finish: str | None = None,
                     logprobs: dict[str, Any] | None = None) -> Chunk:
    return head.chunk({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish})


def completion_response(head: Head, choices: list[dict[str, Any]], usage: Usage) -> dict[str, Any]:
    return {"id": head.id, "object": TEXT_COMPLETION, "created": head.created, "model": head.model,
            "choices": choices, "usage": usage_dict(usage)}
