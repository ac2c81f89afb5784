"""Fair prefill: how a step's prompt budget is split (pure planner), and on real llama.cpp a
short prompt's first token does not wait for a long prompt that arrived before it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from appliance.config import ModelConfig
from appliance.engine.prefill import Reader, split_budget
from appliance.engine.runner import Runner
from appliance.engine.types import GenerationRequest, SamplingParams


def test_short_prompts_first_and_the_oldest_keeps_a_share() -> None:
    readers = [Reader("long", 1370, since=1.0), Reader("a", 20, since=2.0), Reader("b", 40, since=3.0)]
    plan = split_budget(512, readers)
    assert plan == [("a", 20), ("b", 40), ("long", 452)]  # the short ones whole, the rest to the long one
    # many short prompts: the long one (waiting longest) still gets its quarter
    many = [Reader("long", 1370, since=0.0)] + [Reader(f"s{i}", 100, since=1.0 + i) for i in range(10)]
    plan = dict(split_budget(512, many))
    assert plan["long"] == 128 and sum(plan.values()) == 512
    assert [k for k in plan if k != "long"] == ["s0", "s1", "s2", "s3"]  # shortest, then oldest, first
    # an old short prompt is served whole even with a small budget
    assert split_budget(8, [Reader("x", 3, 0.0), Reader("y", 100, 1.0)]) == [("x", 3), ("y", 5)]


def test_budget_edges() -> None:
    assert split_budget(0, [Reader("x", 5, 0.0)]) == []
    assert split_budget(100, []) == []
    assert split_budget(3, [Reader("x", 5, 0.0)]) == [("x", 3)]
    assert split_budget(4, [Reader("x", 2, 0.0), Reader("y", 2, 1.0)]) == [("x", 2), ("y", 2)]


async def test_short_prompt_behind_a_long_one_gets_its_first_token_first(tiny_gguf: Path) -> None:
    cfg = ModelConfig(source=f"file://{tiny_gguf}", context=512, parallel=2)
    r = Runner([tiny_gguf], cfg, model_id="tiny", n_threads=1, n_batch=32)
    try:
        params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
        long_prompt, short_prompt = list(range(1000, 1300)), list(range(2000, 2005))
        # submitted together, the long one first: by arrival order it would take every step's
        # whole budget for ten steps before the short one is read
        long_gen, short_gen = r.generate_batch([GenerationRequest(long_prompt, params),
                                                GenerationRequest(short_prompt, params)])
        order: list[str] = []

        async def first(name: str, g) -> None:  # noqa: ANN001
            async for d in g:
                if d.token_ids and name not in order:
                    order.append(name)


        await asyncio.gather(first("long", long_gen), first("short", short_gen))
        assert order == ["short", "long"]
        assert long_gen.usage.prompt_eval_tokens == 300 and short_gen.usage.prompt_eval_tokens == 5
    finally:
        r.close()
