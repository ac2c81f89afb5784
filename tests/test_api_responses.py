"""/v1/responses on a real daemon and real llama.cpp (tiny random-weight GGUF), with the
official openai client's Responses API as the client: text, streaming events, tools,
`text.format`, `previous_response_id`."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from appliance.auth import create_key
from test_api_support import pull_all, serving, write_config



@pytest.fixture
def env(tmp_path: Path, tiny_models: dict[str, Path]):  # noqa: ANN201
    settings = write_config(tmp_path, {
        "tiny": {"source": f"file://{tiny_models['a']}", "context": 512, "parallel": 2, "keep_alive": "forever"}})
    store = pull_all(settings)
    return settings, store, create_key(settings.keys_path, "me")[0], create_key(settings.keys_path, "other")[0]


async def test_responses_text_stream_format_tools_and_history(env) -> None:  # noqa: ANN001
    settings, store, token, other = env
    async with serving(settings, store=store) as d:
        async with openai.AsyncOpenAI(base_url=d.url + "/v1", api_key=token, max_retries=0) as c:
            r = await c.responses.create(model="tiny", input="Hello there", instructions="be brief",
                                         max_output_tokens=6, temperature=0)
            assert r.object == "response" and r.status == "incomplete"
            assert r.incomplete_details.reason == "max_output_tokens"
            assert r.output[0].type == "message" and r.output_text and r.usage.output_tokens == 6

            # streamed: the same text, OpenAI's event sequence, the whole response at the end
            events = [e async for e in await c.responses.create(model="tiny", input="Hello there",
                                                               instructions="be brief", max_output_tokens=6,
                                                               temperature=0, stream=True)]
            kinds = [e.type for e in events]
            assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                                 "response.content_part.added"]
            assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                                  "response.output_item.done", "response.incomplete"]
            assert [e.sequence_number for e in events] == list(range(len(events)))
            text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
            assert text == r.output_text == events[-1].response.output_text

            # previous_response_id: the last turn (input and output) comes before the new input
            r2 = await c.responses.create(model="tiny", input="And then?", previous_response_id=r.id,
                                          max_output_tokens=3, temperature=0)
            alone = await c.responses.create(model="tiny", input="And then?", max_output_tokens=3, temperature=0)
            assert r2.usage.input_tokens > alone.usage.input_tokens + r.usage.output_tokens
            with pytest.raises(openai.NotFoundError):
                await c.responses.create(model="tiny", input="x", previous_response_id="resp_unknown")

            # text.format json_schema: enforced by grammar
            schema = {"type": "object", "properties": {"a": {"enum": ["yes", "no"]}}, "required": ["a"],
                      "additionalProperties": False}
            j = await c.responses.create(model="tiny", input="answer", temperature=0, max_output_tokens=120,
                                         text={"format": {"type": "json_schema", "name": "a", "schema": schema}})
            assert j.status == "completed" and json.loads(j.output_text)["a"] in ("yes", "no")

            # a forced function call comes back as a function_call item; its output goes back in
            tool = {"type": "function", "name": "get_weather", "description": "weather of a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
                                   "required": ["city"], "additionalProperties": False}}
            t = await c.responses.create(model="tiny", input="Weather in Paris?", tools=[tool], tool_choice="required",
                                         temperature=0, max_output_tokens=120)
            calls = [o for o in t.output if o.type == "function_call"]
            assert calls and calls[0].name == "get_weather" and "city" in json.loads(calls[0].arguments)
            t2 = await c.responses.create(model="tiny", previous_response_id=t.id, tools=[tool], max_output_tokens=2,
                                          input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                                                  "output": '{"temp": 21}'}])
            assert t2.output and t2.usage.input_tokens > t.usage.input_tokens
            with pytest.raises(openai.BadRequestError) as e:
                await c.responses.create(model="tiny", input="x", tools=[{"type": "web_search"}])
            assert e.value.body["param"] == "tools[0].type"
        async with openai.AsyncOpenAI(base_url=d.url + "/v1", api_key=other, max_retries=0) as c:
            with pytest.raises(openai.NotFoundError):  # another key cannot continue my conversation
                await c.responses.create(model="tiny", input="x", previous_response_id=r.id)
