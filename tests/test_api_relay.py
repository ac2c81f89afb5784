"""The OpenAI chunk shapes (pure functions) and the one streaming relay chat and completions
share, driven through the engine's real Generation (fed the way the runner feeds it) on a
real aiohttp server: what happens before the headers, after streaming began, and at the end."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

import pytest
from aiohttp import web

from appliance.api import chunks
from appliance.api.chat import ChatChoices
from appliance.api.chat_render import ChatPrompt
from appliance.api.chunks import Head
from appliance.api.completions import CompletionChoices
from appliance.api.middleware import errors
from appliance.api.relay import relay
from appliance.api.sse import SSEStream
from appliance.api.state import request_facts
from appliance.engine.generation import _END, Generation, post_many
from appliance.engine.types import Delta, TokenLogprob, TopLogprob, Usage
from appliance.errors import ContextLengthExceeded, EngineError

HEAD = Head("chatcmpl-1", chunks.CHAT_CHUNK, 1700000000, "m")


def lp(token: str, logprob: float) -> TokenLogprob:
    return TokenLogprob(token, logprob, list(token.encode()), [TopLogprob(token, logprob, list(token.encode()))])


# --- pure chunk formatting ----------------------------------------------------------------


def test_every_chunk_repeats_the_head_and_usage_null_only_when_asked() -> None:
    c = chunks.chat_delta(HEAD, 1, {"content": "hi"}, "stop")
    assert c == {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "m",
                 "choices": [{"index": 1, "delta": {"content": "hi"}, "logprobs": None, "finish_reason": "stop"}]}
    with_usage = Head(HEAD.id, HEAD.object, HEAD.created, HEAD.model, include_usage=True)
    assert chunks.completion_chunk(with_usage, 0, "x")["usage"] is None
    last = with_usage.usage_chunk(Usage(prompt_tokens=5, completion_tokens=2, cached_tokens=3))
    assert last["choices"] == [] and last["usage"] == {
        "prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7, "prompt_tokens_details": {"cached_tokens": 3}}
    assert chunks.usage_dict(Usage(prompt_tokens=1)) == {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1}


def test_logprob_shapes_chat_rowwise_completions_columnwise_with_offsets() -> None:
    items = [lp("ab", -0.5), lp("c", -1.0)]
    assert chunks.chat_delta(HEAD, 0, {}, logprobs=items)["choices"][0]["logprobs"]["content"][1] == {
        "token": "c", "logprob": -1.0, "bytes": [99], "top_logprobs": [{"token": "c", "logprob": -1.0, "bytes": [99]}]}
    assert chunks.completion_logprobs(items, 10) == {
        "tokens": ["ab", "c"], "token_logprobs": [-0.5, -1.0], "top_logprobs": [{"ab": -0.5}, {"c": -1.0}],
        "text_offset": [10, 12]}


def test_tool_calls_stream_id_and_name_first_then_arguments() -> None:
    (call,) = chunks.tool_call_ids([("get", '{"a":1}')])
    assert call["id"].startswith("call_") and call["function"] == {"name": "get", "arguments": '{"a":1}'}
    whole = chunks.chat_choice(0, "", [call], "tool_calls", None)
    assert whole["message"] == {"role": "assistant", "content": None, "tool_calls": [call]}


def _tool_prompt() -> ChatPrompt:
    from appliance.engine.chatout import OutputReader
    from appliance.engine.tools.families import GENERIC

    return ChatPrompt("p", reader=OutputReader(tools=GENERIC))


def test_chat_with_tools_streams_content_then_each_call_id_and_name_first() -> None:
    ch = ChatChoices(HEAD, _tool_prompt(), n=1, stream=True, logprobs=False)
    out = ch.add(0, Delta(0, "ok <tool"))  # '<tool' may be the marker: held back
    assert [c["choices"][0]["delta"] for c in out] == [{"role": "assistant", "content": "ok "}]
    out = ch.add(0, Delta(0, '_call>{"name": "get", "arguments": {"a"'))
    deltas = [c["choices"][0]["delta"] for c in out]
    assert deltas[0]["tool_calls"][0]["function"] == {"name": "get", "arguments": ""}
    first_id = deltas[0]["tool_calls"][0]["id"]
    assert deltas[1]["tool_calls"][0] == {"index": 0, "function": {"arguments": '{"a"'}}
    out = ch.add(0, Delta(0, ': 1}}</tool_call>', finish_reason="stop"))
    deltas = [c["choices"][0]["delta"] for c in out]
    assert deltas[0]["tool_calls"][0] == {"index": 0, "function": {"arguments": ': 1}'}}
    assert [c["choices"][0]["finish_reason"] for c in out] == [None, "tool_calls"]
    body = ch.response(Usage())
    assert body["choices"][0]["finish_reason"] == "tool_calls" and body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["tool_calls"][0]["function"] == {"name": "get", "arguments": '{"a": 1}'}
    assert first_id.startswith("call_")


def test_reasoning_streams_as_reasoning_content() -> None:
    from appliance.engine.chatout import OutputReader
    from appliance.engine.reasoning import Thinking

    prompt = ChatPrompt("p", reader=OutputReader(thinking=Thinking("<think>", "</think>", False)))
    ch = ChatChoices(HEAD, prompt, n=1, stream=True, logprobs=False)
    out = ch.add(0, Delta(0, "<think>Hmm"))
    out += ch.add(0, Delta(0, ".</think>Yes.", finish_reason="stop"))
    assert [c["choices"][0]["delta"] for c in out] == [
        {"role": "assistant", "reasoning_content": "Hmm"}, {"reasoning_content": "."}, {"content": "Yes."}, {}]
    assert ch.response(Usage())["choices"][0]["message"] == {
        "role": "assistant", "content": "Yes.", "reasoning_content": "Hmm."}


def test_chat_without_tools_streams_role_once_and_one_finish() -> None:
    ch = ChatChoices(HEAD, ChatPrompt("p"), n=2, stream=True, logprobs=True)
    a = ch.add(0, Delta(1, "x", [lp("x", -0.1)]))
    b = ch.add(0, Delta(1, "y", [lp("y", -0.2)], finish_reason="length"))
    assert [c["choices"][0]["delta"] for c in a + b] == [
        {"role": "assistant", "content": "x"}, {"content": "y"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in a + b] == [None, None, "length"]
    assert b[0]["choices"][0]["logprobs"]["content"][0]["token"] == "y"
    assert ch.response(Usage())["choices"][1]["message"] == {"role": "assistant", "content": "xy"}
    assert ch.response(Usage())["choices"][0]["finish_reason"] == "stop"  # nothing came for choice 0


def test_completions_number_choices_per_prompt_and_echo_once() -> None:
    ch = CompletionChoices(Head.new("completion", "m"), ["P0", "P1"], n=2, stream=False, logprobs=False)
    for gen, idx, text in ((0, 1, "a"), (1, 0, "b"), (1, 0, "c")):
        assert ch.add(gen, Delta(idx, text)) == []
    body = ch.response(Usage())
    assert [c["text"] for c in body["choices"]] == ["", "P0a", "P1bc", ""]
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")


# --- the relay on a real server -----------------------------------------------------------


class Feed:
    """Real engine Generations, each fed a script of items (deltas, a usage, an exception or
    the end) through `post_many`, the runner's own delivery; records cancellations."""

    def __init__(self, *scripts: list[object]) -> None:
        self.scripts = list(scripts)
        self.cancelled = 0
        self.facts: Any = None

    def starts(self) -> list[Callable[[], Generation]]:
        def start(script: list[object]) -> Generation:
            gen = Generation(asyncio.get_running_loop(), 1, self._cancel)
            post_many([(gen, script)])
            return gen

        return [lambda s=s: start(s) for s in self.scripts]

    def _cancel(self) -> None:
        self.cancelled += 1


async def _serve(aiohttp_client: Any, feed: Feed) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        stream = request.query.get("stream") == "1"
        head = Head("cmpl-1", chunks.TEXT_COMPLETION, 1, "m", include_usage=stream)
        choices = CompletionChoices(head, [""] * len(feed.scripts), 1, stream, False)
        feed.facts = request_facts(request)  # the errors middleware fills error_code later
        return await relay(request, head, stream, choices, feed.starts())

    app = web.Application(middlewares=[errors])
    app.router.add_post("/", handler)
    return await aiohttp_client(app)


def _events(raw: str) -> list[Any]:
    return [e.removeprefix("data: ") for e in raw.split("\n\n") if e]


@pytest.mark.parametrize("stream", ["0", "1"])
async def test_failure_before_the_first_delta_is_a_real_http_status(aiohttp_client: Any, stream: str) -> None:
    feed = Feed([ContextLengthExceeded("the prompt is 300 tokens; the context is 256")])
    client = await _serve(aiohttp_client, feed)
    r = await client.post("/", params={"stream": stream})
    assert r.status == 400 and r.content_type == "application/json"
    assert (await r.json())["error"]["code"] == "context_length_exceeded"
    assert feed.facts.error_code == "context_length_exceeded"


async def test_failure_after_streaming_began_is_one_error_event_then_the_end(aiohttp_client: Any) -> None:
    u = Usage(prompt_tokens=4, completion_tokens=1)
    feed = Feed([Delta(0, "a"), u, _END], [Delta(0, "b"), RuntimeError("llama_decode failed (-3)")])
    client = await _serve(aiohttp_client, feed)
    r = await client.post("/", params={"stream": "1"})
    assert r.status == 200
    events = _events(await r.text())
    assert [json.loads(e)["choices"][0]["text"] for e in events[:2]] == ["a", "b"]
    err = json.loads(events[2])["error"]
    assert err["code"] == "internal_error" and "llama_decode failed (-3)" in err["message"]
    assert len(events) == 3  # no [DONE]: the stream ended with the error
    assert feed.facts.error_code == "internal_error" and feed.facts.prompt_tokens == 4


async def test_non_streamed_failure_midway_is_a_500_and_usage_sums_the_generations(aiohttp_client: Any) -> None:
    feed = Feed([Delta(0, "a"), EngineError("decoding failed for this request")])
    client = await _serve(aiohttp_client, feed)
    r = await client.post("/")
    assert r.status == 500 and (await r.json())["error"]["code"] == "internal_error"

    ok = Feed([Delta(0, "a", finish_reason="length"), Usage(prompt_tokens=2, completion_tokens=1, ttft_s=0.5), _END],
              [Delta(0, "b", finish_reason="stop"), Usage(prompt_tokens=3, completion_tokens=1, ttft_s=0.9), _END])
    client = await _serve(aiohttp_client, ok)
    r = await client.post("/", params={"stream": "1"})
    events = _events(await r.text())
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-2] if json.loads(e)["choices"]] == [
        None, "length", None, "stop"]
    assert (ok.facts.prompt_tokens, ok.facts.completion_tokens, ok.facts.ttft_s, ok.facts.stream) == (5, 2, 0.5, True)


def test_logprobs_of_held_back_tokens_come_with_the_next_chunk() -> None:
    ch = ChatChoices(HEAD, _tool_prompt(), n=1, stream=True, logprobs=True)
    first = ch.add(0, Delta(0, "ok", [lp("ok", -0.1)]))
    held = ch.add(0, Delta(0, " <tool", [lp(" <tool", -0.2)]))  # ' ' streams, '<tool' is held back
    later = ch.add(0, Delta(0, "s are fun", [lp("s are fun", -0.3)], finish_reason="stop"))
    tokens = [t["token"] for c in first + held + later
              for t in ((c["choices"][0]["logprobs"] or {}).get("content") or [])]
    assert tokens == ["ok", " <tool", "s are fun"]  # every token's logprob, once, in order
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in first + held + later) == "ok <tools are fun"


class _CountingSSE(SSEStream):
    """The relay's real stream, recording each write the response gets."""

    writes: list[bytes] = []

    def __init__(self, request: web.Request) -> None:
        super().__init__(request)
        write = self.response.write

        async def counted(data: bytes) -> None:
            _CountingSSE.writes.append(bytes(data))
            await write(data)

        self.response.write = counted  # type: ignore[method-assign]


async def test_deltas_already_queued_go_out_in_one_write_in_order(aiohttp_client: Any) -> None:
    script: list[object] = [Delta(0, t) for t in ["a", "b", "c", "d"]]
    script += [Delta(0, "e", finish_reason="stop"), Usage(prompt_tokens=2, completion_tokens=5), _END]
    feed = Feed(script)  # all of it queued before the relay reads the first delta

    async def handler(request: web.Request) -> web.StreamResponse:
        head = Head("cmpl-1", chunks.TEXT_COMPLETION, 1, "m", include_usage=True)
        choices = CompletionChoices(head, [""], 1, True, False)
        return await relay(request, head, True, choices, feed.starts(), stream_type=_CountingSSE)

    app = web.Application(middlewares=[errors])
    app.router.add_post("/", handler)
    client = await aiohttp_client(app)
    _CountingSSE.writes = []
    r = await client.post("/")
    body = await r.text()
    assert [w.count(b"data: ") for w in _CountingSSE.writes] == [6, 2]  # the deltas; usage + [DONE]
    assert b"".join(_CountingSSE.writes).decode() == body
    events = _events(body)
    texts = [(c["choices"][0]["text"], c["choices"][0]["finish_reason"]) for c in map(json.loads, events[:6])]
    assert texts == [("a", None), ("b", None), ("c", None), ("d", None), ("e", None), ("", "stop")]
    assert json.loads(events[6]) == {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                                     "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 5,
                                                              "total_tokens": 7}}
    assert events[7] == "[DONE]" and len(events) == 8


async def test_a_failure_queued_behind_deltas_comes_after_them(aiohttp_client: Any) -> None:
    feed = Feed([Delta(0, "a"), Delta(0, "b"), RuntimeError("llama_decode failed (-3)")])
    client = await _serve(aiohttp_client, feed)
    events = _events(await (await client.post("/", params={"stream": "1"})).text())
    assert [json.loads(e)["choices"][0]["text"] for e in events[:2]] == ["a", "b"]
    assert json.loads(events[2])["error"]["code"] == "internal_error" and len(events) == 3


async def test_ready_takes_queued_deltas_and_leaves_the_end_for_iteration() -> None:
    gen = Generation(asyncio.get_running_loop(), 1, lambda: None)
    assert gen.ready() == []
    gen._put([Delta(0, "a", token_ids=(1,)), Delta(0, "b", token_ids=(2, 3)), Usage(completion_tokens=3), _END])
    assert [d.text for d in gen.ready()] == ["a", "b"]
    assert gen.delivered.completion_tokens == 3 and gen.ready() == []
    assert [d async for d in gen] == [] and gen.finished and gen.usage.completion_tokens == 3


def test_chunks_encode_as_compact_utf8_json_and_fall_back_to_json_where_orjson_cannot() -> None:
    c = chunks.chat_delta(HEAD, 0, {"content": "é \u2028 \"q\" \\ \x00"}, logprobs=[lp("é", -0.25)])
    assert SSEStream.encode(c) == json.dumps(c, ensure_ascii=False, separators=(",", ":")).encode()
    assert SSEStream.encode({"big": 2**70}) == b'{"big":1180591620717411303424}'  # past orjson's 64 bits


def test_chunks_are_valid_json_whichever_encoder_writes_them() -> None:
    """orjson writes a non-finite float as null; json, where orjson cannot (past 64-bit ints,
    numpy scalars), must not write `-Infinity`/`NaN` instead, nor fail on a numpy scalar."""
    import numpy as np

    assert SSEStream.encode({"big": 2**70, "x": float("-inf"), "l": [float("nan")]}) == \
        b'{"big":1180591620717411303424,"x":null,"l":[null]}'
    assert SSEStream.encode({"x": np.float64("-inf"), "n": np.int64(3), "f": np.float32(0.5)}) == \
        b'{"x":null,"n":3,"f":0.5}'


def test_a_completion_delta_with_nothing_in_it_sends_no_chunk() -> None:
    """The first bytes of a character: no text yet, and its logprob waits for the text
    (engine/output.py), so there is nothing to stream until the character is whole."""
    head = Head("cmpl-1", chunks.TEXT_COMPLETION, 1700000000, "m")
    c = CompletionChoices(head, [""], 1, stream=True, logprobs=True)
    assert c.add(0, Delta(0, "", [], None, (1,))) == []
    [chunk] = c.add(0, Delta(0, "é", [lp("é", -0.5)], None, (2,)))
    assert chunk["choices"][0]["text"] == "é" and chunk["choices"][0]["logprobs"]["tokens"] == ["é"]
