"""Ollama requests -> the OpenAI chat body the rest of the API already serves (template,
tools, grammar for `format`, sampling), and engine output -> Ollama's shapes (pure)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from ...engine.types import Usage
from ...errors import InvalidRequest
from ..schemas import ChatCompletionRequest, parse_body
from .schemas import ChatRequest, Message, Options


def catalog_name(catalog: Any, name: str) -> str:
    """Ollama names carry a tag, `:latest` when none is given: `gemma:latest` is the catalog's
    `gemma` unless the catalog has an id (or alias) spelled with the tag."""
    if name.endswith(":latest") and catalog.resolve(name) is None and catalog.resolve(name[:-7]) is not None:
        return name[:-7]
    return name


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts or 0, timezone.utc).isoformat().replace("+00:00", "Z")


def response_format(fmt: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """`format: "json"` -> any JSON object; a JSON schema -> output that matches it."""
    if not fmt:
        return None
    if fmt == "json":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}


def sampling(o: Options) -> dict[str, Any]:
    """The OpenAI body's sampling fields (with llama.cpp's extensions) from Ollama's options;
    what is left out takes the model's defaults from models.toml."""
    body: dict[str, Any] = {}
    for name in ("temperature", "top_p", "top_k", "min_p", "typical_p", "repeat_penalty", "repeat_last_n",
                 "seed", "presence_penalty", "frequency_penalty"):
        v = getattr(o, name)
        if v is not None:
            body[name] = v
    if o.stop:
        body["stop"] = [o.stop] if isinstance(o.stop, str) else list(o.stop)
    if o.num_predict is not None and o.num_predict > 0:
        body["max_tokens"] = o.num_predict
    return body


def data_url(b64: str) -> str:
    """Ollama sends bare base64; the image's own bytes say its format when it is decoded."""
    return "data:image/png;base64," + b64


def with_images(text: str, images: list[str] | None) -> str | list[dict[str, Any]]:
    """Ollama's base64 `images` -> OpenAI content parts (the text, then each image as a data
    URL), so they are checked and placed the way /v1/chat's images are."""
    if not images:
        return text
    return [{"type": "text", "text": text}] + [
        {"type": "image_url", "image_url": {"url": data_url(b64)}} for b64 in images]


def openai_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Ollama's tool calls carry no ids and its tool results name the tool: ids are made up
    here and each result takes the oldest unanswered call's id (of the same name when given)."""
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (id, name) of calls not answered yet
    for i, m in enumerate(messages):
        d: dict[str, Any] = {"role": m.role, "content": with_images(m.content, m.images)}
        if m.role == "assistant" and m.tool_calls:
            calls = []
            for k, c in enumerate(m.tool_calls):
                cid = f"call_{i}_{k}"
                pending.append((cid, c.function.name))
                calls.append({"id": cid, "type": "function",
                              "function": {"name": c.function.name, "arguments": json.dumps(c.function.arguments)}})
            d["tool_calls"] = calls
        if m.role == "tool":
            match = next((p for p in pending if m.tool_name in (None, p[1])), None)
            if match is not None:
                pending.remove(match)
            d["tool_call_id"] = match[0] if match else f"call_{i}"
            if m.tool_name:
                d["name"] = m.tool_name
        out.append(d)
    return out


def thinking(think: bool | str | None) -> dict[str, Any]:
    """Ollama's `think`: true -> reasoning apart (message.thinking); false -> the template's
    enable_thinking off; "low"/"medium"/"high" -> reasoning_effort (gpt-oss)."""
    if think is None:
        return {}
    if isinstance(think, str):
        return {"reasoning_format": "separate", "reasoning_effort": think}
    if think:
        return {"reasoning_format": "separate"}
    return {"chat_template_kwargs": {"enable_thinking": False}}


def chat_body(model: str, messages: list[dict[str, Any]], options: Options, fmt: Any,
              tools: list[dict[str, Any]] | None = None, think: bool | str | None = None) -> ChatCompletionRequest:
    """The OpenAI chat body, validated as /v1/chat/completions validates it."""
    raw: dict[str, Any] = {"model": model, "messages": messages, **sampling(options), **thinking(think)}
    rf = response_format(fmt)
    if rf is not None:
        raw["response_format"] = rf
    if tools:
        raw["tools"] = tools
    return parse_body(ChatCompletionRequest, raw)


def chat_request_body(b: ChatRequest) -> ChatCompletionRequest:
    return chat_body(b.model, openai_messages(b.messages), b.options, b.format, b.tools, b.think)


def tool_calls(calls: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Parsed (name, JSON arguments) -> Ollama's calls, arguments as an object."""
    out = []
    for name, args in calls:
        try:
            parsed = json.loads(args) if args.strip() else {}
        except ValueError:
            parsed = {}
        out.append({"function": {"name": name, "arguments": parsed if isinstance(parsed, dict) else {"value": parsed}}})
    return out


def timings(usage: Usage, total_ns: int, load_ns: int) -> dict[str, Any]:
    """Ollama's counters (durations in nanoseconds) from the engine's usage."""
    eval_ns = 0
    if usage.decode_tokens_per_s:
        eval_ns = int(usage.completion_tokens / usage.decode_tokens_per_s * 1e9)
    return {
        "total_duration": total_ns,
        "load_duration": load_ns,
        "prompt_eval_count": usage.prompt_tokens,
        "prompt_eval_duration": int((usage.ttft_s or 0) * 1e9),
        "eval_count": usage.completion_tokens,
        "eval_duration": eval_ns,
    }
