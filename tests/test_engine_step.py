"""The step planner (engine/step.py) on its own: what one decode step carries, no llama.cpp."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

from appliance.engine.step import Part, StepPlan, plan_step


@dataclass(frozen=True)
class S:
    """A slot as the planner sees it (step.SlotState)."""

    seq: int
    n_cached: int = 0
    next_token: int | None = None
    unread: Sequence[int] = field(default=())
    submitted: float = 0.0


def rows(plan: StepPlan) -> list[int]:
    return [p.row for p in plan.parts]


def test_idle_slots_make_an_empty_plan() -> None:
    plan = plan_step([S(0), S(1, n_cached=7)], budget=512)
    assert not plan and plan.n_tokens == 0 and plan.parts == ()


def test_each_generating_slot_decodes_its_token_at_its_next_position() -> None:
    plan = plan_step([S(0, n_cached=5, next_token=11), S(1), S(2, n_cached=9, next_token=22)], budget=512)
    assert plan.parts == (
        Part(0, (11,), pos0=5, row=0, output=True, prompt=False),
        Part(2, (22,), pos0=9, row=1, output=True, prompt=False),
    )


def test_prompts_follow_generated_tokens_oldest_first_with_rows_in_batch_order() -> None:
    slots = [
        S(0, unread=[1, 2, 3], submitted=2.0),
        S(1, n_cached=4, next_token=9),
        S(2, n_cached=2, unread=[5, 6], submitted=1.0),
    ]
    plan = plan_step(slots, budget=512)
    assert [p.seq for p in plan.parts] == [1, 2, 0]
    assert plan.parts[1] == Part(2, (5, 6), pos0=2, row=2, output=True, prompt=True)
    assert plan.parts[2] == Part(0, (1, 2, 3), pos0=0, row=5, output=True, prompt=True)
    assert plan.n_tokens == 6


def test_a_long_prompt_is_chunked_to_the_budget_and_asks_no_output_until_its_last_chunk() -> None:
    prompt = list(range(100, 110))
    gen = S(0, n_cached=3, next_token=7)
    plan = plan_step([gen, S(1, unread=prompt)], budget=4)
    assert plan.parts[1] == Part(1, (100, 101, 102), pos0=0, row=3, output=False, prompt=True)
    assert plan.n_tokens == 4


def test_short_prompts_go_first_and_the_oldest_keeps_a_share_of_the_budget() -> None:
    plan = plan_step([S(0, unread=[1] * 6, submitted=0.0), S(1, unread=[2] * 3, submitted=1.0)], budget=6)
    assert [(p.seq, len(p.tokens), p.output) for p in plan.parts] == [(1, 3, True), (0, 3, False)]
    plan = plan_step([S(0, unread=[1] * 40, submitted=0.0), S(1, unread=[2] * 30, submitted=1.0)], budget=8)
    assert [(p.seq, len(p.tokens), p.output) for p in plan.parts] == [(1, 6, False), (0, 2, False)]
    plan = plan_step([S(0, unread=[1] * 3, submitted=0.0), S(1, unread=[2] * 30, submitted=1.0)], budget=2)
    assert [(p.seq, len(p.tokens)) for p in plan.parts] == [(0, 2)]  # the oldest and shortest first


def test_generated_tokens_are_never_cut_by_the_budget() -> None:
    slots = [S(i, n_cached=1, next_token=i) for i in range(4)] + [S(4, unread=[1, 2])]
    plan = plan_step(slots, budget=3)
    assert [p.seq for p in plan.parts] == [0, 1, 2, 3]


def test_reading_a_long_prompt_never_stalls_a_generating_slot() -> None:
    """Simulate steps: the generating slot decodes one token every step while the prompt is
    read in budget-sized chunks, and the prompt's last chunk asks for its first token."""
    gen = S(0, n_cached=10, next_token=1)
    reader = S(1, unread=list(range(25)))
    steps = 0
    while reader.unread:
        plan = plan_step([gen, reader], budget=8)
        steps += 1
        assert plan.parts[0].seq == 0 and plan.parts[0].pos0 == gen.n_cached
        chunk = plan.parts[1]
        assert chunk.pos0 == reader.n_cached and len(chunk.tokens) <= 7
        assert chunk.output == (len(chunk.tokens) == len(reader.unread))
        gen = replace(gen, n_cached=gen.n_cached + 1)
        reader = replace(reader, n_cached=reader.n_cached + len(chunk.tokens),
                         unread=reader.unread[len(chunk.tokens):])
    assert steps == 4  # 25 prompt tokens, 7 a step
    assert reader.n_cached == 25


def test_only_keeps_some_slots_work_and_renumbers_rows() -> None:
    plan = plan_step([S(0, n_cached=1, next_token=5), S(1, unread=[1, 2, 3]), S(2, n_cached=4, next_token=6)],
                     budget=512)
    assert rows(plan) == [0, 1, 4]
    alone = plan.only([1])
    assert alone.parts == (Part(1, (1, 2, 3), pos0=0, row=2, output=True, prompt=True),)
    both = plan.only([2, 0])
    assert rows(both) == [0, 1] and [p.seq for p in both.parts] == [0, 2]


@dataclass(frozen=True)
class VS(S):
    """A slot whose unread prompt may start with an image (negative pseudo-ids)."""

    image_len: int = 0


def test_an_image_is_planned_apart_and_never_stalls_generating_or_reading_slots() -> None:
    gen = VS(0, n_cached=3, next_token=7)
    img = VS(1, unread=[-5, -6, -7, 40, 41], image_len=3, submitted=1.0)
    txt = VS(2, unread=[30, 31], submitted=2.0)
    plan = plan_step([gen, img, txt], budget=512)
    assert plan.parts == (
        Part(0, (7,), pos0=3, row=0, output=True, prompt=False),
        Part(2, (30, 31), pos0=0, row=2, output=True, prompt=True),
    )
    assert plan.images == (Part(1, (-5, -6, -7), pos0=0, row=-1, output=False, prompt=True, image=True),)


def test_a_prompt_chunk_stops_before_its_next_image_and_one_image_goes_per_step() -> None:
    a = VS(0, unread=[1, 2, -3, -4, 5], image_len=2, submitted=1.0)
    b = VS(1, unread=[-8, -9, 6], image_len=2, submitted=2.0)
    c = VS(2, unread=[-10, 7], image_len=1, submitted=0.5)
    plan = plan_step([a, b, c], budget=512)
    assert [(p.seq, p.tokens, p.output) for p in plan.parts] == [(0, (1, 2), False)]
    assert [p.seq for p in plan.images] == [2]  # the oldest image
