"""The engine on the real Gemma 3 270M (Q4_K_M, 262k vocabulary): slower, used sparingly."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from appliance.config import ModelConfig
from appliance.engine.runner import Runner
from appliance.engine.types import GenerationRequest, SamplingParams

pytestmark = pytest.mark.gemma


@pytest.fixture(scope="module")
def gemma(gemma_path: Path) -> Iterator[Runner]:
    r = Runner([gemma_path], ModelConfig(source=f"file://{gemma_path}", context=256, parallel=4), n_threads=1)
    yield r
    r.close()


async def test_isolation_in_a_fixed_shape_batch(gemma: Runner) -> None:
    """Same batch makeup (4 sequences, same prompt lengths), different neighbours: same greedy tokens."""
    mine = gemma.tokenize("The history of the Roman empire", add_special=True)
    n = len(mine)
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)

    async def run(neighbour_base: int) -> list[int]:
        others = [[2] + list(range(neighbour_base + 50 * k, neighbour_base + 50 * k + n - 1)) for k in range(3)]
        # a fresh runner per run: no prefix cache changes how much of the prompt is read
        r = Runner([Path(gemma.cfg.source.removeprefix("file://"))], gemma.cfg, n_threads=1)
        try:
            gens = r.generate_batch([GenerationRequest(p, params) for p in [mine, *others]])
            toks: list[list[int]] = []
            for g in gens:
                t: list[int] = []
                async for d in g:
                    t.extend(d.token_ids)
                toks.append(t)
            return toks[0]
        finally:
            r.close()

    assert await run(1000) == await run(20000)


async def test_cjk_and_emoji_stream_intact(gemma: Runner) -> None:
    for prompt in ["日本語の文章: 東京は", "Emoji list: 😀 😃 😄 😁"]:
        g = gemma.generate(GenerationRequest(prompt, SamplingParams(max_tokens=10, temperature=0)))
        deltas = [d async for d in g]
        joined = "".join(d.text for d in deltas)
        assert joined == b"".join(gemma.piece(t) for d in deltas for t in d.token_ids).decode("utf-8")
        assert any(ord(c) > 0x2E80 for c in joined)
        assert all("\ufffd" not in d.text for d in deltas)


async def test_default_chat_template_and_prefix_reuse(gemma: Runner) -> None:
    assert gemma.vocab.chat_template is None  # the base model ships none: our Gemma default applies
    chat = gemma.render_chat([{"role": "user", "content": "Name a colour."}])
    assert chat.prompt.startswith("<bos><start_of_turn>user\n") and chat.add_special is False
    params = SamplingParams(max_tokens=8, temperature=0, stop=chat.stop)
    g1 = gemma.generate(GenerationRequest(chat.prompt, params, add_special=False))
    assert [d async for d in g1][-1].finish_reason in ("stop", "length")
    g2 = gemma.generate(GenerationRequest(chat.prompt, params, add_special=False))
    assert [d async for d in g2][-1].finish_reason in ("stop", "length")
    assert g2.usage.cached_tokens == g2.usage.prompt_tokens - 1 and g2.usage.prompt_eval_tokens == 1
