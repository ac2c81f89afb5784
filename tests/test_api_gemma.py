"""The API on the real Gemma 3 270M: tools round trip, json_schema output, multi-byte text."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from appliance.auth import create_key
from test_api_support import pull_all, serving, write_config

pytestmark = pytest.mark.gemma


@pytest.fixture
def env(tmp_path: Path, gemma_path: Path):  # noqa: ANN201
    settings = write_config(tmp_path, {"gemma": {"source": f"file://{gemma_path}", "context": 1024, "parallel": 2}})
    store = pull_all(settings)
    token, _ = create_key(settings.keys_path, "g")
    return settings, store, token


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                       "required": ["city"]},
    },
}


async def test_gemma_tools_json_schema_and_multibyte_streams(env) -> None:  # noqa: ANN001
    settings, store, token = env
    async with serving(settings, store=store) as d:
        async with openai.AsyncOpenAI(base_url=d.url + "/v1", api_key=token, _strict_response_validation=True,
                                      max_retries=0) as c:
            # tools round trip: a forced call comes back parsed, its result goes back in
            msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
            r = await c.chat.completions.create(model="gemma", messages=msgs, tools=[WEATHER], tool_choice="required",
                                                temperature=0, max_tokens=60)
            ch = r.choices[0]
            assert ch.finish_reason == "tool_calls" and ch.message.tool_calls
            call = ch.message.tool_calls[0]
            assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
            msgs += [ch.message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}]
            r2 = await c.chat.completions.create(model="gemma", messages=msgs, tools=[WEATHER], temperature=0,
                                                 max_tokens=20)
            assert r2.choices[0].message.role == "assistant"

            # the same forced call streamed: integer index, id and name only in the first delta
            stream = await c.chat.completions.create(model="gemma", messages=msgs[:1], tools=[WEATHER],
                                                     tool_choice="required", temperature=0, max_tokens=60, stream=True)
            deltas = [tc for chunk in [x async for x in stream] for ch in chunk.choices
                      for tc in (ch.delta.tool_calls or [])]
            assert deltas and all(isinstance(t.index, int) for t in deltas)
            for k in sorted({t.index for t in deltas}):  # per call: id and name in its first delta only
                mine = [t for t in deltas if t.index == k]
                assert mine[0].id and mine[0].function.name == "get_weather"
                assert all(t.id is None and (t.function is None or t.function.name is None) for t in mine[1:])
            args = "".join(t.function.arguments or "" for t in deltas if t.index == 0 and t.function)
            assert "city" in json.loads(args)

            # json_schema: the grammar makes the output parse, including CJK and emoji values
            schema = {"type": "object", "properties": {"greeting": {"enum": ["你好，世界", "🎉🚀 ok", "こんにちは"]},
                                                       "n": {"type": "integer"}},
                      "required": ["greeting", "n"], "additionalProperties": False}
            rf = {"type": "json_schema", "json_schema": {"name": "g", "schema": schema}}
            whole = await c.chat.completions.create(model="gemma", messages=[{"role": "user", "content": "Greet me"}],
                                                    response_format=rf, temperature=0, max_tokens=40, seed=3)
            obj = json.loads(whole.choices[0].message.content)
            assert obj["greeting"] in schema["properties"]["greeting"]["enum"]
            stream = await c.chat.completions.create(model="gemma", messages=[{"role": "user", "content": "Greet me"}],
                                                     response_format=rf, temperature=0, max_tokens=40, seed=3,
                                                     stream=True)
            pieces = [ch.choices[0].delta.content or "" async for ch in stream if ch.choices]
            assert "\ufffd" not in "".join(pieces)
            assert json.loads("".join(pieces)) == obj

            # free text with emoji/CJK in the prompt streams as whole characters
            stream = await c.chat.completions.create(
                model="gemma", messages=[{"role": "user", "content": "Translate 🎉 and 日本語 to French."}],
                temperature=0, max_tokens=30, stream=True)
            text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
            assert "\ufffd" not in text
