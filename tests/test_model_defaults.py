"""Per-model defaults in models.toml (`system`, `max_tokens`, `stop`): applied where a request
leaves the field out, never over what it sends."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from appliance.api.model_defaults import with_model_defaults
from appliance.api.schemas import ChatCompletionRequest, CompletionRequest
from appliance.config import ModelConfig
from test_api_support import pull_all, serving, write_config

NO_EOS = {"2": -100}
CFG = ModelConfig(source="file:///m.gguf", system="be brief", max_tokens=3, stop=["\n\n"])


def test_defaults_fill_only_what_is_missing() -> None:
    chat = with_model_defaults(ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}), CFG)
    assert [(m.role, m.content) for m in chat.messages] == [("system", "be brief"), ("user", "hi")]
    assert (chat.token_limit, chat.stops) == (3, ("\n\n",))
    own = with_model_defaults(ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "system", "content": "mine"}, {"role": "user", "content": "hi"}],
         "max_completion_tokens": 9, "stop": "END"}), CFG)
    assert [m.content for m in own.messages] == ["mine", "hi"] and (own.token_limit, own.stops) == (9, ("END",))
    comp = with_model_defaults(CompletionRequest.model_validate({"model": "m", "prompt": "x"}), CFG)
    assert (comp.max_tokens, comp.stops) == (3, ("\n\n",))  # over OpenAI's 16 for completions
    sent = with_model_defaults(CompletionRequest.model_validate({"model": "m", "prompt": "x", "max_tokens": 16}), CFG)
    assert sent.max_tokens == 16


async def test_defaults_reach_the_engine(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    src = f"file://{tiny_models['a']}"
    settings = write_config(tmp_path, {
        "plain": {"source": src, "context": 256, "parallel": 1},
        "tuned": {"source": src, "context": 256, "parallel": 1, "max_tokens": 3,
                  "system": "You answer in one short sentence, always."},
    })
    store = pull_all(settings)
    async with serving(settings, store=store) as d:
        async with openai.AsyncOpenAI(base_url=d.url + "/v1", api_key="none", max_retries=0) as c:
            msgs = [{"role": "user", "content": "hi"}]
            plain = await c.chat.completions.create(model="plain", messages=msgs, max_tokens=3, logit_bias=NO_EOS)
            tuned = await c.chat.completions.create(model="tuned", messages=msgs, logit_bias=NO_EOS)
            assert tuned.usage.completion_tokens == 3  # the model's max_tokens, not the context's end
            assert tuned.usage.prompt_tokens > plain.usage.prompt_tokens  # its system prompt was rendered
            more = await c.chat.completions.create(model="tuned", messages=msgs, max_tokens=5, logit_bias=NO_EOS)
            assert more.usage.completion_tokens == 5
