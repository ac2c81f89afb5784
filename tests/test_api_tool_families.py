"""Native tool calls end to end over HTTP: tiny random-weight models, each carrying a real
family's chat template, served by the daemon; the official openai client asks with
tool_choice required or a named function and gets tool_calls whose arguments validate
against the tool's schema (the family's grammar held the model to its own syntax, the
family's parser read it back), streamed with id and name first."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, AsyncIterator

import jsonschema
import openai
import pytest

from appliance.auth import create_key
from ggufmaker import Shape, cached_gguf
from test_api_support import openai_client, pull_all, serving, write_config

TEMPLATES = Path(__file__).parent / "data" / "templates"
FAMILY_TEMPLATES = {  # family -> a real template that speaks it
    "hermes": "Qwen-Qwen2.5-7B-Instruct.jinja",
    "qwen3-coder": "Qwen3-Coder.jinja",
    "mistral-v11": "unsloth-mistral-Devstral-Small-2507.jinja",
    "mistral": "mistralai-Mistral-Nemo-Instruct-2407.jinja",
    "llama3": "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "glm-4.5": "GLM-4.6.jinja",
    "deepseek-v3.1": "deepseek-ai-DeepSeek-V3.1.jinja",
    "kimi-k2": "moonshotai-Kimi-K2.jinja",
    "command-r7b": "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja",
    "functionary-v3.2": "meetkai-functionary-medium-v3.2.jinja",
    "lfm2": "LFM2.5-8B-A1B.jinja",
    "gpt-oss": "openai-gpt-oss-120b.jinja",
    "minimax-m2": "MiniMax-M2.jinja",
}
PARAMS = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]},
                                           "days": {"type": "integer", "enum": [1, 2, 3]}},
          "required": ["city", "days"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": PARAMS}},
         {"type": "function", "function": {"name": "get_time", "description": "Time", "parameters": {
             "type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
             "required": ["zone"]}}}]
SCHEMA = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "Weather in Paris for 2 days?"}]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    tmp = tmp_path_factory.mktemp("families")
    models = {}
    for fam, name in FAMILY_TEMPLATES.items():
        path = cached_gguf(Shape(name=f"tpl-{fam}", chat_template=(TEMPLATES / name).read_text()))
        models[fam] = {"source": f"file://{path}", "context": 2048, "parallel": 1}
    r1 = cached_gguf(Shape(name="tpl-r1", chat_template=(TEMPLATES / "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja")
                           .read_text()))
    models["r1"] = {"source": f"file://{r1}", "context": 512, "parallel": 1}
    models["r1-inline"] = {"source": f"file://{r1}", "context": 512, "parallel": 1, "reasoning": "inline"}
    settings = write_config(tmp, models)
    store = pull_all(settings)
    token, _ = create_key(settings.keys_path, "tester")
    return settings, store, token


client = openai_client  # a daemon serving the env, and a strict openai client on it


def _valid(name: str, arguments: str) -> dict[str, Any]:
    args = json.loads(arguments)
    jsonschema.validate(args, SCHEMA[name])
    return args


# The test vocabulary is SentencePiece, whose tokenizer reads DeepSeek's "▁" as a space:
# llguidance then lets the tokenizer's " calls" through a mask that forces "▁calls" and refuses
# it when fed back. Real DeepSeek vocabularies are byte-level BPE, where "▁" is three bytes.
SPM_ARTEFACT = pytest.mark.xfail(reason="SentencePiece test vocabulary cannot write DeepSeek's '▁' markers "
                                        "under llguidance", strict=True)


@pytest.mark.parametrize("family", [pytest.param(f, marks=SPM_ARTEFACT) if f.startswith("deepseek") else f
                                    for f in FAMILY_TEMPLATES])
async def test_required_and_named_tool_calls_validate_against_the_schema(env, family: str) -> None:  # noqa: ANN001
    async with client(env) as c:
        r = await c.chat.completions.create(model=family, messages=ASK, tools=TOOLS, tool_choice="required",
                                            parallel_tool_calls=False, max_tokens=200, temperature=0.7, seed=3)
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls" and ch.message.tool_calls
        assert len(ch.message.tool_calls) == 1 and not ch.message.content  # no call syntax leaks into content
        call = ch.message.tool_calls[0]
        _valid(call.function.name, call.function.arguments)
        # the call and its result go back (the template renders them natively) and the model answers
        history = ASK + [ch.message.model_dump(exclude_none=True),
                         {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}]
        again = await c.chat.completions.create(model=family, messages=history, tools=TOOLS, max_tokens=3,
                                                logit_bias={"2": -100})
        assert again.choices[0].finish_reason in ("length", "tool_calls", "stop")

        stream = await c.chat.completions.create(
            model=family, messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}},
            max_tokens=200, temperature=0.7, seed=5, stream=True)
        calls: dict[int, dict[str, str]] = {}
        finish = []
        async for chunk in stream:
            for choice in chunk.choices:
                assert not choice.delta.content
                for tc in choice.delta.tool_calls or []:
                    if tc.index not in calls:  # the call's first delta: id and name
                        assert tc.id and tc.function and tc.function.name == "get_time"
                        calls[tc.index] = {"name": tc.function.name, "arguments": ""}
                    else:
                        assert tc.id is None and tc.function.name is None
                    calls[tc.index]["arguments"] += tc.function.arguments or ""
                if choice.finish_reason:
                    finish.append(choice.finish_reason)
        assert finish == ["tool_calls"] and list(calls) == [0]
        assert _valid("get_time", calls[0]["arguments"])["zone"] in ("UTC", "CET")


NO_EOS = {"2": -100}  # the llama-spm vocab's </s>: random weights keep generating


async def test_reasoning_separate_or_inline_per_model_and_per_request(env) -> None:  # noqa: ANN001
    """DeepSeek R1's prompt opens <think>: what follows is reasoning until </think>."""
    async with client(env) as c:
        ask = dict(messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0, logit_bias=NO_EOS)
        sep = (await c.chat.completions.create(model="r1", **ask)).choices[0].message
        thought = sep.model_extra["reasoning_content"]
        assert thought and sep.content == ""
        inline = (await c.chat.completions.create(model="r1-inline", **ask)).choices[0].message
        assert inline.content.strip() == thought and "reasoning_content" not in (inline.model_extra or {})
        per_request = (await c.chat.completions.create(model="r1", extra_body={"reasoning_format": "none"}, **ask))
        assert per_request.choices[0].message.content.strip() == thought
        stream = await c.chat.completions.create(model="r1", stream=True, **ask)
        pieces = [ch.choices[0].delta.model_extra.get("reasoning_content") async for ch in stream if ch.choices]
        assert "".join(p for p in pieces if p).strip() == thought
        history = [{"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "Hello.", "reasoning_content": "They greet me."},
                   {"role": "user", "content": "again"}]
        r = await c.chat.completions.create(model="r1", messages=history, max_tokens=2, logit_bias=NO_EOS)
        assert r.choices[0].finish_reason == "length"
