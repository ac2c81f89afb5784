"""Ollama <-> the chat path as pure functions: messages (tool calls without ids), options,
`format`, and the NDJSON lines of one choice, tool calls included (no server, no model)."""

from __future__ import annotations

import json
import math

import pytest

from appliance.api.chat_render import ChatPrompt
from appliance.api.ollama import convert
from appliance.api.ollama.generate import OllamaChoices
from appliance.api.ollama.schemas import Message, Options, keep_alive_seconds
from appliance.engine.chatout import OutputReader
from appliance.engine.tools.families import GENERIC
from appliance.engine.types import Delta, Usage
from appliance.errors import InvalidRequest


def test_messages_get_tool_call_ids_matched_by_name() -> None:
    msgs = [Message(role="user", content="weather and time?"),
            Message(role="assistant", tool_calls=[{"function": {"name": "weather", "arguments": {"city": "Oslo"}}},
                                                  {"function": {"name": "time", "arguments": {}}}]),
            Message(role="tool", content="12:00", tool_name="time"),
            Message(role="tool", content="rain", tool_name="weather")]
    out = convert.openai_messages(msgs)
    calls = out[1]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["weather", "time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    assert out[2]["tool_call_id"] == calls[1]["id"] and out[3]["tool_call_id"] == calls[0]["id"]


def test_options_and_format() -> None:
    body = convert.sampling(Options(num_predict=7, temperature=0.2, top_k=5, min_p=0.1, stop="x",
                                    repeat_penalty=1.1, num_ctx=99))  # type: ignore[call-arg]
    assert body == {"temperature": 0.2, "top_k": 5, "min_p": 0.1, "repeat_penalty": 1.1, "stop": ["x"], "max_tokens": 7}
    assert "max_tokens" not in convert.sampling(Options(num_predict=-1))
    assert convert.response_format("json") == {"type": "json_object"}
    assert convert.response_format({"type": "object"})["json_schema"]["schema"] == {"type": "object"}
    assert convert.response_format("") is None
    assert convert.thinking(True) == {"reasoning_format": "separate"}
    assert convert.thinking(False) == {"chat_template_kwargs": {"enable_thinking": False}}
    assert convert.thinking("high")["reasoning_effort"] == "high" and convert.thinking(None) == {}
    assert keep_alive_seconds(0) == keep_alive_seconds("0s") == 0 and keep_alive_seconds("5m") == 300
    assert keep_alive_seconds(-1) == keep_alive_seconds("-1m") == math.inf and keep_alive_seconds(None) is None
    with pytest.raises(InvalidRequest):
        keep_alive_seconds("soon")


def _tool_prompt() -> ChatPrompt:
    """The generic `<tool_call>{json}</tool_call>` family's reader, as the engine builds it."""
    return ChatPrompt("prompt", reader=OutputReader(tools=GENERIC))


def test_streamed_tool_calls_are_held_and_parsed() -> None:
    ch = OllamaChoices("chat", "m", True, _tool_prompt(), t0=0, load_ns=0)
    assert ch.add(0, Delta(0, "ok <tool_call>")) == []  # held back: the call syntax is read whole
    lines = ch.add(0, Delta(0, '{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>',
                            finish_reason="stop"))
    assert lines[0]["message"] == {"role": "assistant", "content": "ok",
                                   "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}]}
    last = ch.usage_chunk(Usage(prompt_tokens=3, completion_tokens=2, decode_tokens_per_s=2.0))
    assert last["done"] and last["done_reason"] == "stop" and last["eval_count"] == 2
    assert last["eval_duration"] == 1_000_000_000 and last["message"]["content"] == ""


def test_generate_lines_carry_context() -> None:
    ch = OllamaChoices("generate", "m", False, None, t0=0, load_ns=0, context=[1, 2])
    ch.add(0, Delta(0, "a", token_ids=(5,)))
    ch.add(0, Delta(0, "b", token_ids=(6,), finish_reason="length"))
    whole = ch.response(Usage())
    assert whole["response"] == "ab" and whole["context"] == [1, 2, 5, 6] and whole["done_reason"] == "length"
