"""Sampling on real llama.cpp (tiny random-weight GGUFs): the drawn tokens honour temperature,
top_k, top_p and min_p, on the host and inside the compute graph (backend sampling, which
runs on the CPU backend too), and seeds reproduce for the same batch makeup."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

from appliance.config import ModelConfig
from appliance.engine.runner import Runner
from appliance.engine.types import GenerationRequest, SamplingParams

PROMPT = [5, 6, 7, 8, 9]


@pytest.fixture
def runners(tiny_gguf: Path) -> Iterator:
    made: list[Runner] = []

    def make(backend: bool, parallel: int = 4) -> Runner:
        cfg = ModelConfig(source=f"file://{tiny_gguf}", context=128, parallel=parallel, backend_sampling=backend)
        r = Runner([tiny_gguf], cfg, model_id="tiny", n_threads=1)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


async def tokens(r: Runner, reqs: list[GenerationRequest]) -> list[list[int]]:
    out = []
    for g in r.generate_batch(reqs):
        toks: list[int] = []
        async for d in g:
            toks.extend(d.token_ids)
        out.append(toks)
    return out


async def top_logprobs(r: Runner, prompt: list[int], k: int = 20) -> dict[int, float]:
    """The raw next-token log-probabilities (before temperature and filters) of the k best."""
    g = r.generate(GenerationRequest(prompt, SamplingParams(max_tokens=1, temperature=0, logprobs=True,
                                                            top_logprobs=k, ignore_eos=True)))
    lps = [lp async for d in g for lp in d.logprobs]
    return {_id(r, t.bytes): t.logprob for t in lps[0].top}


def _id(r: Runner, piece: list[int]) -> int:
    """The token whose piece is these bytes (the tiny vocabulary's pieces are unique)."""
    for t in range(r.vocab.n_vocab):
        if list(r.piece(t)) == piece:
            return t
    raise AssertionError(f"no token for {piece}")


async def draws(r: Runner, params: SamplingParams, n: int) -> list[int]:
    """n first tokens after PROMPT, each from its own seed, 4 requests per step."""
    out: list[int] = []
    for base in range(0, n, 4):
        reqs = [GenerationRequest(PROMPT, _with_seed(params, 1000 + base + i)) for i in range(4)]
        out += [t[0] for t in await tokens(r, reqs)]
    return out


def _with_seed(p: SamplingParams, seed: int) -> SamplingParams:
    return replace(p, seed=seed)


@pytest.mark.parametrize("backend", [False, True], ids=["host", "graph"])
async def test_backend_sampling_attaches_only_where_asked(runners, backend: bool) -> None:
    r = runners(backend)
    assert r.backend_sampling is backend
    seen: list[bool] = []
    g = r.generate(GenerationRequest(PROMPT, SamplingParams(max_tokens=3, temperature=0.8, ignore_eos=True)))
    async for _ in g:
        seen.append(any(s.choice is not None and s.choice.sampler.on_backend for s in r._slots))
    assert seen[0] is backend


@pytest.mark.parametrize("backend", [False, True], ids=["host", "graph"])
async def test_top_k_1_is_greedy(runners, backend: bool) -> None:
    r = runners(backend)
    prompts = [list(range(100 + 10 * i, 108 + 10 * i)) for i in range(4)]
    greedy = await tokens(r, [GenerationRequest(p, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
                              for p in prompts])
    top1 = await tokens(r, [GenerationRequest(p, SamplingParams(max_tokens=12, temperature=1.5, top_k=1, seed=i,
                                                                ignore_eos=True)) for i, p in enumerate(prompts)])
    assert top1 == greedy
    assert len(set(greedy[0])) > 1


async def test_graph_greedy_equals_host_greedy(runners) -> None:
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    prompts = [list(range(200 + 10 * i, 206 + 10 * i)) for i in range(4)]
    host = await tokens(runners(False), [GenerationRequest(p, params) for p in prompts])
    graph = await tokens(runners(True), [GenerationRequest(p, params) for p in prompts])
    assert host == graph


@pytest.mark.parametrize("backend", [False, True], ids=["host", "graph"])
async def test_seed_reproduces_for_the_same_batch_makeup(runners, backend: bool) -> None:
    async def run(seed: int) -> list[list[int]]:
        r = runners(backend)
        ps = [SamplingParams(max_tokens=16, temperature=5.0, seed=seed + i, ignore_eos=True) for i in range(4)]
        return await tokens(r, [GenerationRequest(PROMPT, p) for p in ps])

    a1, a2, b = await run(42), await run(42), await run(77)
    assert a1 == a2
    assert a1 != b
    assert len(set(a1[0])) > 3  # a high temperature: varied tokens


def _expected(lps: dict[int, float], temperature: float, keep: set[int]) -> dict[int, float]:
    w = {t: math.exp(lp / temperature) for t, lp in lps.items() if t in keep}
    z = sum(w.values())
    return {t: v / z for t, v in w.items()}


def _check_frequencies(got: list[int], expected: dict[int, float]) -> None:
    """Every drawn token is allowed, and each allowed token's count is within 5 sigma."""
    n = len(got)
    assert set(got) <= set(expected), f"tokens outside the allowed set: {set(got) - set(expected)}"
    for t, p in expected.items():
        c = got.count(t)
        sigma = math.sqrt(n * p * (1 - p)) + 1
        assert abs(c - n * p) <= 5 * sigma, (t, c, n * p)


@pytest.mark.parametrize("backend", [False, True], ids=["host", "graph"])
async def test_draws_follow_temperature_within_top_k(runners, backend: bool) -> None:
    r = runners(backend)
    lps = await top_logprobs(r, PROMPT)
    best = sorted(lps, key=lps.get, reverse=True)  # type: ignore[arg-type]
    t = 8.0  # the tiny model's logits are far apart: a high temperature makes the top 3 all likely
    got = await draws(r, SamplingParams(max_tokens=1, temperature=t, top_k=3, ignore_eos=True), 160)
    _check_frequencies(got, _expected(lps, t, set(best[:3])))
    assert len(set(got)) == 3


@pytest.mark.parametrize("backend", [False, True], ids=["host", "graph"])
async def test_min_p_and_top_p_cut_the_tail(runners, backend: bool) -> None:
    r = runners(backend)
    lps = await top_logprobs(r, PROMPT)
    best = sorted(lps, key=lps.get, reverse=True)  # type: ignore[arg-type]
    pmax = math.exp(lps[best[0]])
    # min_p (on the raw distribution): only tokens with p >= min_p * p_max survive
    min_p = math.exp(lps[best[2]]) / pmax * 0.999  # keeps exactly the top 3
    got = await draws(r, SamplingParams(max_tokens=1, temperature=8.0, top_k=0, min_p=min_p, ignore_eos=True), 80)
    assert set(got) <= set(best[:3]) and len(set(got)) > 1
    # top_p: the smallest set of best tokens whose probability reaches top_p
    cum, keep = 0.0, []
    for tok in best:
        keep.append(tok)
        cum += math.exp(lps[tok])
        if len(keep) == 2:
            break
    top_p = cum * 0.999  # the best two reach it, the best one alone does not
    assert math.exp(lps[best[0]]) < top_p
    got = await draws(r, SamplingParams(max_tokens=1, temperature=8.0, top_k=0, top_p=top_p, ignore_eos=True), 80)
    assert set(got) <= set(keep) and len(set(got)) == 2


async def test_a_slot_keeps_its_chain_in_the_graph_for_alike_requests(runners, monkeypatch) -> None:  # noqa: ANN001
    """Attaching a chain makes llama.cpp re-plan its graph (a stall for every stream): the next
    request in the slot with the same settings and no seed of its own takes the chain over."""
    from appliance.engine import sampling

    calls: list[object] = []
    real = sampling.ll.llama_set_sampler

    def spy(ctx, seq, smpl):  # noqa: ANN001, ANN202
        calls.append(smpl)
        return real(ctx, seq, smpl)

    monkeypatch.setattr(sampling.ll, "llama_set_sampler", spy)
    r = runners(True, parallel=1)
    host = runners(False, parallel=1)
    alike = SamplingParams(max_tokens=4, temperature=0.8, top_k=40, ignore_eos=True)
    for i in range(3):
        assert len((await tokens(r, [GenerationRequest(PROMPT + [i], alike)]))[0]) == 4
    assert len(calls) == 1 and calls[0] is not None  # attached once, then reused
    greedy = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    assert await tokens(r, [GenerationRequest(PROMPT, greedy)]) == await tokens(host, [GenerationRequest(PROMPT, greedy)])
    assert len(calls) == 2 and calls[1] is not None  # other settings: replaced
    seeded = replace(greedy, seed=3)
    await tokens(r, [GenerationRequest(PROMPT, seeded)])
    # an explicit seed never takes a chain over, nor leaves its own for the next request
    assert len(calls) == 4 and calls[2] is not None and calls[3] is None
    await tokens(r, [GenerationRequest(PROMPT, greedy)])
    assert len(calls) == 5
    lp = replace(greedy, logprobs=True, top_logprobs=2)
    got = await tokens(r, [GenerationRequest(PROMPT, lp)])
    assert len(calls) == 6 and calls[5] is None  # logprobs need the raw row: the chain left the graph
    assert got == await tokens(host, [GenerationRequest(PROMPT, greedy)])


def test_backend_sampling_setting() -> None:
    import llama_cpp as ll

    from appliance.engine.sampling import use_backend_sampling

    assert use_backend_sampling(True, 0) is True and use_backend_sampling(False, -1) is False
    assert use_backend_sampling("auto", 0) is False  # nothing offloaded: the logits are on the host anyway
    assert use_backend_sampling("auto", -1) is bool(ll.llama_supports_gpu_offload())
