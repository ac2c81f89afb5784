"""Prompt logprobs (issue 18): `echo` with `logprobs` scores the prompt's tokens, and
`max_tokens: 0` returns only that (evaluation tools score text this way). Real llama.cpp
(tiny random-weight GGUF), the openai client."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from test_api_support import pull_all, serving, write_config


@pytest.fixture
def env(tmp_path: Path, tiny_gguf: Path):  # noqa: ANN201
    settings = write_config(tmp_path, {"tiny": {"source": f"file://{tiny_gguf}", "context": 128, "parallel": 2}})
    return settings, pull_all(settings)


async def test_echo_scores_the_prompt(env) -> None:  # noqa: ANN001
    settings, store = env
    prompt = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278]  # BOS + "The quick brown fox jumps over the"
    async with serving(settings, store=store) as d:
        async with openai.AsyncOpenAI(base_url=d.url + "/v1", api_key="none", max_retries=0) as c:
            scored = await c.completions.create(model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=3)
            ch = scored.choices[0]
            lp = ch.logprobs
            assert ch.text == "".join(lp.tokens) and ch.finish_reason == "length"
            assert len(lp.tokens) == len(prompt) and scored.usage.completion_tokens == 0
            assert scored.usage.prompt_tokens == len(prompt)
            assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # the first token has no context
            assert all(x < 0 for x in lp.token_logprobs[1:]) and all(len(t) == 3 for t in lp.top_logprobs[1:])
            # each position's distribution is what generating from the tokens before it sees
            for k in (1, 4, len(prompt) - 1):
                gen = await c.completions.create(model="tiny", prompt=prompt[:k], max_tokens=1, logprobs=3,
                                                 temperature=0)
                expect = gen.choices[0].logprobs.top_logprobs[0]
                assert lp.top_logprobs[k].keys() == expect.keys()
                for tok, value in expect.items():
                    assert lp.top_logprobs[k][tok] == pytest.approx(value, abs=1e-3)
            # echo with generation: the prompt's logprobs first, then the generated tokens'
            both = await c.completions.create(model="tiny", prompt=prompt, max_tokens=2, echo=True, logprobs=1,
                                              temperature=0, logit_bias={"2": -100})
            blp = both.choices[0].logprobs
            assert len(blp.tokens) == len(prompt) + 2 and blp.token_logprobs[0] is None
            assert blp.token_logprobs[1:len(prompt)] == pytest.approx(lp.token_logprobs[1:], abs=1e-3)
            assert both.choices[0].text.startswith(ch.text)
            # streamed, the first chunk carries the echo and its logprobs
            stream = await c.completions.create(model="tiny", prompt=prompt, max_tokens=2, echo=True, logprobs=1,
                                                temperature=0, logit_bias={"2": -100}, stream=True)
            chunks = [x async for x in stream]
            assert chunks[0].choices[0].logprobs.token_logprobs[0] is None
            assert sum(len(x.choices[0].logprobs.tokens) for x in chunks if x.choices[0].logprobs) == len(prompt) + 2
            # max_tokens 0 without logprobs: the echo alone; streaming it is refused
            plain = await c.completions.create(model="tiny", prompt="Hello", max_tokens=0, echo=True)
            assert plain.choices[0].text == "Hello" and plain.usage.completion_tokens == 0
            with pytest.raises(openai.BadRequestError) as e:
                await c.completions.create(model="tiny", prompt="Hello", max_tokens=0, stream=True)
            assert e.value.body["param"] == "stream"
