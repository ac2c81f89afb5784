"""The engine on real llama.cpp: tiny random-weight GGUFs (deterministic under greedy).

The tiny models have an untied random output head, so different seeds give different
greedy continuations; some tests still add a frequency penalty or a high temperature where
they need output that does not repeat itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
import json
import re
from pathlib import Path
from typing import Iterator

import pytest

from appliance.config import ModelConfig
from appliance.engine.chat import render_chat
from appliance.engine.generation import Generation
from appliance.engine.guidance import compile_async, gbnf_grammar, schema_grammar
from appliance.engine.runner import Runner
from appliance.engine.types import Delta, GenerationRequest, SamplingParams
from appliance.errors import ContextLengthExceeded, EngineError, InvalidRequest


def _cfg(path: Path, **kw: object) -> ModelConfig:
    return ModelConfig(source=f"file://{path}", **kw)  # type: ignore[arg-type]


@pytest.fixture
def make_runner(tiny_gguf: Path) -> Iterator:
    made: list[Runner] = []

    def make(path: Path | None = None, arrival_wait_s: float = 0.02, n_batch: int = 512, **kw: object) -> Runner:
        kw.setdefault("context", 256)
        kw.setdefault("parallel", 4)
        r = Runner([path or tiny_gguf], _cfg(path or tiny_gguf, **kw), model_id="tiny", n_threads=1,
                   arrival_wait_s=arrival_wait_s, n_batch=n_batch)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def no_eog(r: Runner) -> dict[int, float]:
    return {t: -100.0 for t in r.vocab.eog_ids}


async def drain(g: Generation) -> tuple[dict[int, str], dict[int, list[int]], dict[int, str | None], list[Delta]]:
    texts: dict[int, str] = {}
    toks: dict[int, list[int]] = {}
    finish: dict[int, str | None] = {}
    deltas: list[Delta] = []
    async for d in g:
        deltas.append(d)
        texts[d.index] = texts.get(d.index, "") + d.text
        toks.setdefault(d.index, []).extend(d.token_ids)
        if d.finish_reason:
            finish[d.index] = d.finish_reason
    return texts, toks, finish, deltas


async def test_concurrent_streams_complete_with_usage(make_runner) -> None:
    r = make_runner()
    params = SamplingParams(max_tokens=12, temperature=0, logit_bias=no_eog(r))
    gens = [r.generate(GenerationRequest(f"Prompt number {i}", params)) for i in range(6)]  # > 4 slots: 2 queue
    for g in gens:
        texts, toks, finish, _ = await drain(g)
        assert finish == {0: "length"}
        assert len(toks[0]) == 12
        assert g.usage.completion_tokens == 12
        assert g.usage.prompt_tokens == len(r.tokenize(f"Prompt number {gens.index(g)}"))
        assert g.usage.ttft_s is not None
    assert r.busy_slots == 0
    assert r.stats.tokens_generated == 72
    assert r.buffers.total("model") > 0 and r.model_bytes > 0 and r.context_bytes > 0


async def test_isolation_with_fixed_batch_shape(make_runner) -> None:
    """A request's greedy tokens don't depend on what the other sequences of the batch hold."""
    params = SamplingParams(max_tokens=24, temperature=0, frequency_penalty=30.0, ignore_eos=True)
    mine = list(range(1000, 1016))

    async def run(others_base: int) -> list[int]:
        r = make_runner()
        others = [list(range(others_base + 100 * k, others_base + 100 * k + 16)) for k in range(3)]
        gens = r.generate_batch([GenerationRequest(p, params) for p in [mine, *others]])
        outs = [await drain(g) for g in gens]
        return outs[0][1][0]

    a, b = await run(2000), await run(9000)
    assert len(a) == 24 and len(set(a)) > 10  # varied output, not a repeated token
    assert a == b


async def test_seed_reproduces_for_same_batch_makeup(make_runner) -> None:
    async def run(seed: int) -> list[int]:
        r = make_runner()
        g = r.generate(GenerationRequest([5, 6, 7, 8], SamplingParams(max_tokens=16, temperature=50.0, seed=seed,
                                                                      ignore_eos=True)))
        return (await drain(g))[1][0]

    a1, a2, b = await run(42), await run(42), await run(43)
    assert a1 == a2
    assert a1 != b


async def test_stop_string_across_token_boundary_is_cut_and_never_emitted(make_runner) -> None:
    r = make_runner()
    req = GenerationRequest("Once upon a time", SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    texts, toks, _, _ = await drain(r.generate(req))
    pieces = [r.piece(t).decode() for t in toks[0]]
    full = texts[0]
    assert full == "".join(pieces)
    # a stop string made of the end of token 0 and the start of token 1
    assert len(pieces[0]) >= 2 and len(pieces[1]) >= 2
    stop = pieces[0][-2:] + pieces[1][:2]
    cut = full.find(stop)
    assert cut < len(pieces[0]) < cut + len(stop)  # first occurrence spans the boundary
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, stop=(stop, "never-seen"))
    texts2, _, finish2, deltas = await drain(r.generate(GenerationRequest("Once upon a time", params)))
    assert texts2[0] == full[:cut]
    assert finish2 == {0: "stop"}
    assert all(stop[:2] not in d.text or d.text.index(stop[:2]) + len(stop) > len(d.text) for d in deltas)
    assert stop not in "".join(d.text for d in deltas)


async def test_emoji_and_cjk_stream_as_whole_characters(make_runner) -> None:
    """A grammar forces multi-byte characters, some spelled by single-byte tokens."""
    r = make_runner()
    target = "😀中文🎉é"
    c = await compile_async(gbnf_grammar(f'root ::= "{target}"'), r.vocab)
    params = SamplingParams(max_tokens=40, temperature=0, constraint=c)
    _, toks, finish, deltas = await drain(r.generate(GenerationRequest("x", params)))
    assert finish == {0: "stop"}
    joined = "".join(d.text for d in deltas)
    assert joined == target
    assert joined == b"".join(r.piece(t) for t in toks[0]).decode("utf-8")
    assert all("\ufffd" not in d.text for d in deltas)
    assert any(len(r.piece(t)) == 1 and r.piece(t)[0] >= 0x80 for t in toks[0])  # byte tokens were involved


async def test_json_schema_grammar_output_parses(make_runner) -> None:
    r = make_runner()
    schema = {"type": "object", "properties": {"color": {"enum": ["red", "green"]}, "n": {"enum": [1, 2]}},
              "required": ["color", "n"], "additionalProperties": False}
    c = await compile_async(schema_grammar(schema), r.vocab)
    constrained = r.generate(GenerationRequest("Answer in JSON:", SamplingParams(max_tokens=60, temperature=0,
                                                                                  constraint=c)))
    free = r.generate(GenerationRequest("Something else", SamplingParams(max_tokens=30, temperature=0,
                                                                         ignore_eos=True)))
    texts, _, finish, _ = await drain(constrained)
    ftexts, ftoks, ffinish, _ = await drain(free)
    assert finish == {0: "stop"}
    obj = json.loads(texts[0])
    assert obj["color"] in ("red", "green") and obj["n"] in (1, 2) and set(obj) == {"color", "n"}
    assert ffinish == {0: "length"} and len(ftoks[0]) == 30


async def test_cancellation_frees_the_slot(make_runner) -> None:
    r = make_runner(parallel=1, context=4096)
    long = r.generate(GenerationRequest("a", SamplingParams(max_tokens=4000, temperature=0, ignore_eos=True)))
    async for _ in long:
        break  # the consumer goes away after the first delta
    short = r.generate(GenerationRequest("b", SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)))
    _, toks, finish, _ = await drain(short)
    assert finish == {0: "length"} and len(toks[0]) == 3
    assert long.usage.completion_tokens < 4000  # stopped early, not run to the end
    assert r.busy_slots == 0


async def test_aclose_cancels_a_queued_request(make_runner) -> None:
    r = make_runner(parallel=1, context=4096)
    first = r.generate(GenerationRequest("a", SamplingParams(max_tokens=4000, temperature=0, ignore_eos=True)))
    second = r.generate(GenerationRequest("b", SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)))
    await second.aclose()
    await first.aclose()
    third = r.generate(GenerationRequest("c", SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)))
    assert len((await drain(third))[1][0]) == 2
    assert second.usage.completion_tokens == 0


async def test_prefix_reuse_reads_only_new_tokens(make_runner) -> None:
    r = make_runner(parallel=2)
    p = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    conv_a = list(range(3000, 3040))
    conv_b = list(range(5000, 5030))
    _, ta, _, _ = await drain(ga := r.generate(GenerationRequest(conv_a, p)))
    _, tb, _, _ = await drain(gb := r.generate(GenerationRequest(conv_b, p)))
    assert ga.usage.cached_tokens == 0 and gb.usage.cached_tokens == 0
    # each conversation continues: its earlier turn (prompt + reply) + new tokens
    before = r.stats.prompt_tokens_evaluated
    next_a = conv_a + ta[0] + [3100, 3101, 3102]
    next_b = conv_b + tb[0] + [5100, 5101]
    ga2, gb2 = r.generate(GenerationRequest(next_a, p)), r.generate(GenerationRequest(next_b, p))
    await drain(ga2)
    await drain(gb2)
    # the last sampled token of a reply was never decoded, so it is read again with the new ones
    assert ga2.usage.cached_tokens == len(conv_a) + len(ta[0]) - 1
    assert gb2.usage.cached_tokens == len(conv_b) + len(tb[0]) - 1
    assert ga2.usage.prompt_eval_tokens == 4 and gb2.usage.prompt_eval_tokens == 3
    assert r.stats.prompt_tokens_evaluated - before == 7
    # the same prompt again: everything cached, the last token is re-read
    g = r.generate(GenerationRequest(next_a, p))
    await drain(g)
    assert g.usage.cached_tokens == len(next_a) - 1 and g.usage.prompt_eval_tokens == 1


async def test_context_limits(make_runner) -> None:
    r = make_runner(context=64)
    with pytest.raises(ContextLengthExceeded):
        r.generate(GenerationRequest(list(range(100, 164)), SamplingParams()))
    with pytest.raises(ContextLengthExceeded):
        r.generate(GenerationRequest(list(range(100, 150)), SamplingParams(max_tokens=15)))
    g = r.generate(GenerationRequest(list(range(100, 150)), SamplingParams(temperature=0, ignore_eos=True)))
    _, toks, finish, _ = await drain(g)
    assert finish == {0: "length"} and len(toks[0]) == 14  # exactly up to the configured context


async def test_hopeless_string_prompt_is_refused_without_tokenizing(make_runner, monkeypatch) -> None:  # noqa: ANN001
    """An 8 MiB prompt must not be tokenized on the event loop only to be refused."""
    r = make_runner(context=64)
    per_token = r.vocab.max_chars_per_token
    assert per_token is not None and per_token >= 1  # SPM vocabulary: the bound applies
    calls: list[int] = []
    real = r.vocab.tokenize
    monkeypatch.setattr(r.vocab, "tokenize", lambda text, *a, **kw: calls.append(len(text)) or real(text, *a, **kw))
    with pytest.raises(ContextLengthExceeded) as e:
        r.generate(GenerationRequest("x" * (8 << 20), SamplingParams()))
    assert e.value.code == "context_length_exceeded" and e.value.param == "prompt"
    with pytest.raises(ContextLengthExceeded):
        r.generate(GenerationRequest("y" * (64 * per_token + 1), SamplingParams()))
    assert calls == []  # refused before tokenizing
    # At the bound, the prompt is tokenized (and refused only by its real token count).
    with pytest.raises(ContextLengthExceeded):
        r.generate(GenerationRequest("z " * (64 * per_token // 2), SamplingParams()))
    assert calls == [64 * per_token]
    g = r.generate(GenerationRequest("Hello", SamplingParams(max_tokens=2)))
    await drain(g)
    assert len(calls) == 2


async def test_bad_inputs_are_refused_before_llama_cpp(make_runner) -> None:
    r = make_runner()
    n_vocab = r.vocab.n_vocab
    for req, param in [
        (GenerationRequest([1, n_vocab]), "prompt"),
        (GenerationRequest([-1]), "prompt"),
        (GenerationRequest([]), "prompt"),
        (GenerationRequest("", add_special=False), "prompt"),
        (GenerationRequest("x", SamplingParams(logit_bias={n_vocab + 5: 1.0})), "logit_bias"),
        (GenerationRequest("x", SamplingParams(n=5)), "n"),
        (GenerationRequest("x", SamplingParams(max_tokens=0)), "max_tokens"),
        (GenerationRequest("x", SamplingParams(top_logprobs=50)), "top_logprobs"),
    ]:
        with pytest.raises(InvalidRequest) as ei:
            r.generate(req)
        assert ei.value.param == param
    assert r.queued == 0 and r.busy_slots == 0


async def test_n_choices_share_one_prompt_read(make_runner) -> None:
    r = make_runner()
    prompt = list(range(700, 730))
    g = r.generate(GenerationRequest(prompt, SamplingParams(n=3, max_tokens=10, temperature=50.0, seed=7,
                                                            ignore_eos=True)))
    _, toks, finish, _ = await drain(g)
    assert finish == {0: "length", 1: "length", 2: "length"}
    assert g.usage.prompt_eval_tokens == len(prompt) and g.usage.completion_tokens == 30
    assert len({tuple(t) for t in toks.values()}) == 3  # seeds seed+i differ
    greedy = r.generate(GenerationRequest(prompt, SamplingParams(n=2, max_tokens=6, temperature=0, ignore_eos=True)))
    _, gt, _, _ = await drain(greedy)
    assert gt[0] == gt[1]


async def test_logprobs_with_top_alternatives(make_runner) -> None:
    r = make_runner()
    g = r.generate(GenerationRequest("The quick", SamplingParams(max_tokens=4, temperature=0, ignore_eos=True,
                                                                 logprobs=True, top_logprobs=3)))
    _, toks, _, deltas = await drain(g)
    lps = [lp for d in deltas for lp in d.logprobs]
    assert len(lps) == 4
    for tok, lp in zip(toks[0], lps):
        assert lp.logprob <= 0 and len(lp.top) == 3
        assert [t.logprob for t in lp.top] == sorted((t.logprob for t in lp.top), reverse=True)
        assert lp.top[0].bytes == list(r.piece(tok)) and lp.top[0].logprob == pytest.approx(lp.logprob)


async def test_tool_call_round_trip_with_forced_function(make_runner) -> None:
    r = make_runner(context=512)
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
    ]
    chat = r.render_chat([{"role": "user", "content": "Weather in Paris?"}], tools,
                         {"type": "function", "function": {"name": "get_weather"}})
    assert "get_weather" in chat.prompt and chat.grammar
    c = await compile_async(chat.grammar, r.vocab, param="tools")
    g = r.generate(GenerationRequest(chat.prompt, SamplingParams(max_tokens=80, temperature=0,
                                                                 constraint=c), add_special=chat.add_special))
    texts, _, finish, _ = await drain(g)
    assert finish == {0: "stop"}, texts
    p = chat.reader.read(texts[0])
    assert p.content == "" and len(p.calls) == 1
    assert p.calls[0].name == "get_weather"
    assert json.loads(p.calls[0].arguments)["city"] in ("Paris", "Rome")


async def test_lazy_tool_grammar_leaves_plain_text_alone(make_runner) -> None:
    r = make_runner()
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    chat = render_chat(None, [{"role": "user", "content": "hi"}], tools, "auto", bos=r.bos_text)
    assert chat.grammar_triggers == ("<tool_call>",)
    c = await compile_async(chat.grammar, r.vocab, param="tools")
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True, constraint=c)
    texts, toks, finish, _ = await drain(r.generate(GenerationRequest(chat.prompt, params)))
    assert finish == {0: "length"} and len(toks[0]) == 10
    p = chat.reader.read(texts[0])
    assert (p.content, p.calls) == (texts[0], [])


async def test_embeddings_are_normalized_deterministic_and_batched(tiny_gguf: Path) -> None:
    r = Runner([tiny_gguf], _cfg(tiny_gguf, context=128, parallel=2, embedding=True), n_threads=1)
    try:
        inputs: list[str | list[int]] = ["hello world", "something else entirely", "hello world", [10, 20, 30],
                                         "a fifth one"]
        res = await r.embed(inputs)
        assert len(res.vectors) == 5 and res.prompt_tokens > 0
        for v in res.vectors:
            assert len(v) == r.n_embd
            assert sum(x * x for x in v) == pytest.approx(1.0, abs=1e-5)
        assert res.vectors[0] == pytest.approx(res.vectors[2], abs=1e-6)
        assert res.vectors[0] != pytest.approx(res.vectors[1], abs=1e-3)
        alone = await r.embed(["something else entirely"])
        assert alone.vectors[0] == pytest.approx(res.vectors[1], abs=1e-5)
        with pytest.raises(InvalidRequest):
            r.generate(GenerationRequest("x"))
        with pytest.raises(ContextLengthExceeded):
            await r.embed([list(range(100, 300))])
    finally:
        r.close()


async def test_close_is_idempotent_and_fails_late_callers(make_runner) -> None:
    r = make_runner()
    r.warmup()
    g = r.generate(GenerationRequest("x", SamplingParams(max_tokens=3, temperature=0)))
    await drain(g)
    r.close()
    r.close()
    with pytest.raises(EngineError):
        r.generate(GenerationRequest("x"))


async def test_vocabulary_scans_are_kept_per_model_file(make_runner, tiny_gguf: Path, tmp_path: Path,
                                                        monkeypatch) -> None:  # noqa: ANN001
    """A hot swap must not rescan the vocabulary through ctypes; a changed file is rescanned."""
    import os
    import shutil

    import llama_cpp

    calls: list[int] = []
    real = llama_cpp.llama_vocab_is_eog
    monkeypatch.setattr(llama_cpp, "llama_vocab_is_eog", lambda v, t: calls.append(t) or real(v, t))
    copy = tmp_path / "copy.gguf"
    shutil.copy(tiny_gguf, copy)
    a = make_runner(copy)
    assert len(calls) == a.vocab.n_vocab and a.vocab.eog_ids
    b = make_runner(copy)
    assert len(calls) == a.vocab.n_vocab  # the second load of the same file: no scan
    assert (b.vocab.eog_ids, b.vocab.max_chars_per_token) == (a.vocab.eog_ids, a.vocab.max_chars_per_token)
    st = copy.stat()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    make_runner(copy)
    assert len(calls) == 2 * a.vocab.n_vocab


def test_numpy_greedy_matches_llama_cpp_greedy_with_logit_bias() -> None:
    """The fast greedy path must pick what the llama.cpp chain (logit bias + greedy) picks."""
    import ctypes

    import llama_cpp as ll
    import numpy as np

    from appliance.engine.sampling import SlotSampler

    rng = np.random.default_rng(7)
    n = 5000
    cases = [{}, {3: -100.0}, {10: 50.0, 20: -5.0}, {1: -math.inf, 2: -math.inf}]
    for bias in cases:
        smp = SlotSampler(None, n, SamplingParams(temperature=0, logit_bias=bias), 0, [])
        try:
            for k in range(40):
                row = rng.normal(size=n).astype(np.float32)
                if k % 4 == 1 and bias:  # the raw maximum is a biased token
                    row[next(iter(bias))] = 100.0
                if k % 4 == 2:  # ties: the lowest id wins
                    row[[50, 60]] = 200.0
                data = (ll.llama_token_data * n)(*[ll.llama_token_data(i, float(x), 0.0) for i, x in enumerate(row)])
                arr = ll.llama_token_data_array(data=data, size=n, selected=-1, sorted=False)
                ll.llama_sampler_apply(smp.chain, ctypes.byref(arr))
                assert smp.greedy(row) == arr.data[arr.selected].id, (bias, k)
        finally:
            smp.free()


async def test_requests_arriving_together_share_the_first_step(make_runner) -> None:
    """An idle runner woken by a request lets the event loop finish its turn first, so the
    requests that clients sent together (handled in the same loop turn) start in one step,
    not one after another."""
    r = make_runner(arrival_wait_s=60)  # generous: only the loop's turn may end the wait
    params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    gens = []
    for i in range(3):
        gens.append(r.generate(GenerationRequest(f"Request {i}", params)))
        r.tokenize("parsing the next request " * 2000)  # the loop is busy meanwhile (no await)
    for g in gens:
        _, toks, finish, _ = await drain(g)
        assert finish == {0: "length"} and len(toks[0]) == 1
    assert r.stats.steps == 1  # all three prompts read (and their tokens sampled) in one step


async def test_the_first_token_logs_where_its_time_went_in_steps(make_runner, caplog) -> None:
    """DEBUG: a request's wait for admission and its prompt's steps, counted by the runner."""
    r = make_runner(n_batch=64)  # the step budget: the prompt takes ceil(len / 64) steps
    caplog.set_level(logging.DEBUG, logger="appliance.engine.runner")
    long_prompt = r.tokenize("a long prompt read over several steps " * 20)
    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    _, toks, _, _ = await drain(r.generate(GenerationRequest(long_prompt, params, request_id="req-1")))
    assert len(toks[0]) == 2
    steps = -(-len(long_prompt) // 64)
    [line] = [m.getMessage() for m in caplog.records if "req-1 first token" in m.getMessage()]
    assert f"prompt of {len(long_prompt)} tokens read in" in line and f"({steps} steps)" in line
    assert "(0 steps), prompt" in line  # an idle runner admits it in the first step


async def test_a_request_arriving_while_streams_decode_gets_its_first_token_from_the_next_step(
        make_runner, caplog) -> None:
    """No step is lost on the way in: a request queued while another stream is generating is
    admitted at the next step's start (at most the running step to wait for) and its first
    token is sampled in that same step, from its prompt's output row."""
    r = make_runner()
    caplog.set_level(logging.DEBUG, logger="appliance.engine.runner")
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    busy = r.generate(GenerationRequest("A stream that keeps the runner busy", params))
    first = await busy.__anext__()
    assert first.token_ids and r.stats.steps >= 1
    late = r.generate(GenerationRequest("A request that comes while it decodes", params, request_id="late"))
    (_, toks, _, _), _ = await drain(late), await drain(busy)
    assert len(toks[0]) == 40
    [line] = [m.getMessage() for m in caplog.records if "late first token" in m.getMessage()]
    waited = int(re.search(r"admitted after [\d.]+ ms \((\d+) steps\)", line).group(1))  # type: ignore[union-attr]
    assert waited <= 1 and line.endswith("(1 steps)")
