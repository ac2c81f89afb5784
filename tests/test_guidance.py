"""Constrained decoding on llguidance: the hostile schemas of issue 13 compile at once under
a deadline and without eating memory, what admits nothing is a 400, and the runner's masks
keep every choice inside its grammar."""

from __future__ import annotations

import asyncio
import math
import json
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from appliance.config import ModelConfig
from appliance.engine.chat import render_chat
from appliance.engine.guidance import (
    compile_async,
    compile_constraint,
    gbnf_grammar,
    lark_grammar,
    lazy_grammar,
    response_format_grammar,
    schema_grammar,
    specials_of,
    tokenizer_for,
    with_specials,
)
from appliance.engine.runner import Runner
from appliance.engine.types import GenerationRequest, SamplingParams
from appliance.engine.vocab import Vocab
from appliance.errors import InvalidRequest

DEADLINE_S = 10.0  # a guard against the old behaviour (hours), not a speed threshold
WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def tool_call_grammar(tools: list[dict], tool_choice: object) -> str:
    """The llguidance grammar a chat request gets for its tools (default template: Hermes tags)."""
    g = render_chat(None, [{"role": "user", "content": "hi"}], tools, tool_choice).grammar
    assert g is not None
    return g


@pytest.fixture
def runner(tiny_gguf: Path) -> Iterator[Runner]:
    cfg = ModelConfig(source=f"file://{tiny_gguf}", context=256, parallel=4)
    r = Runner([tiny_gguf], cfg, model_id="tiny", n_threads=1)
    yield r
    r.close()


async def test_catastrophic_pattern_compiles_within_the_deadline(vocab: Vocab) -> None:
    """Finding 1: llama.cpp's GBNF took 17-41 s per token on this 240-byte schema."""
    g = schema_grammar({"type": "string", "pattern": "^(a|a?a|a*){0,1000}b$"})
    c = await compile_async(g, vocab, deadline_s=DEADLINE_S)
    m = c.fork(1)[0]
    tok = tokenizer_for(vocab)
    assert m.try_consume_tokens(tok.tokenize_str('"aaab"')) == len(tok.tokenize_str('"aaab"'))
    assert m.is_accepting()


async def test_huge_min_length_costs_no_memory(vocab: Vocab) -> None:
    """Finding 2: the GBNF converter wrote ~5 bytes per unit of minLength (23 GB RSS)."""
    rss = psutil.Process().memory_info().rss
    for where in ("response_format", "tools"):
        if where == "tools":
            tools = [{"type": "function", "function": {"name": "f", "parameters": {
                "type": "object", "properties": {"s": {"type": "string", "minLength": 1_000_000_000}}}}}]
            g = tool_call_grammar(tools, "required")
        else:
            g = schema_grammar({"type": "string", "minLength": 1_000_000_000})
        await compile_async(g, vocab, deadline_s=DEADLINE_S)
    assert psutil.Process().memory_info().rss - rss < 200 * 1024**2


@pytest.mark.parametrize("schema", [
    {"type": "string", "pattern": "^[z-a]$"},  # can't compile
    {"type": "integer", "minimum": 5, "maximum": 1},  # admits nothing
    {"type": "string", "enum": []},
])
async def test_unsatisfiable_grammars_are_request_errors(vocab: Vocab, schema: dict) -> None:
    with pytest.raises(InvalidRequest) as ei:
        await compile_async(schema_grammar(schema), vocab, deadline_s=DEADLINE_S)
    assert ei.value.param == "response_format"


def test_bad_grammar_text_and_formats(vocab: Vocab) -> None:
    with pytest.raises(InvalidRequest):
        compile_constraint(gbnf_grammar("root ::= ("), vocab)
    with pytest.raises(InvalidRequest):
        response_format_grammar({"type": "json_schema", "json_schema": {"schema": "not a schema"}})
    with pytest.raises(InvalidRequest, match="larger than"):
        schema_grammar({"type": "object", "description": "x" * 70_000})
    assert response_format_grammar({"type": "text"}) is None


def test_many_properties_compile(vocab: Vocab) -> None:
    """Finding 5: 950 properties stalled the event loop 2.3 s through the GBNF converter."""
    props = {f"p{i}": {"type": "string"} for i in range(950)}
    compile_constraint(schema_grammar({"type": "object", "properties": props, "required": list(props)}), vocab)


def test_lazy_tool_grammar_is_free_until_the_trigger(vocab: Vocab) -> None:
    tok = tokenizer_for(vocab)
    c = compile_constraint(tool_call_grammar(WEATHER, "auto"), vocab)

    def consumed(text: str) -> tuple[int, int, bool]:
        m = c.fork(1)[0]
        toks = tok.tokenize_str(text)
        return m.try_consume_tokens(toks), len(toks), m.is_accepting()

    n, total, accepting = consumed("Just text, no call.")
    assert n == total and accepting
    n, total, accepting = consumed("Let me check. <tool_call>")
    assert n == total and not accepting  # the call must follow now
    n, total, _ = consumed("Let me check. <tool_call>not json")
    assert n < total
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    n, total, accepting = consumed("Sure. " + call)
    assert n == total and accepting


async def test_runner_keeps_every_choice_in_the_schema(runner: Runner) -> None:
    """Masks computed beside the decode: the random-weight model's output parses and fits."""
    schema = {"type": "object", "properties": {"a": {"enum": ["p", "q"]}, "n": {"type": "boolean"}},
              "required": ["a", "n"], "additionalProperties": False}
    c = await compile_async(schema_grammar(schema), runner.vocab)
    params = SamplingParams(max_tokens=60, temperature=0.8, seed=3, n=2, constraint=c)
    gen = runner.generate(GenerationRequest("JSON:", params))
    texts = {0: "", 1: ""}
    finishes = {}
    async for d in gen:
        texts[d.index] += d.text
        if d.finish_reason:
            finishes[d.index] = d.finish_reason
    assert finishes == {0: "stop", 1: "stop"}
    for t in texts.values():
        obj = json.loads(t)
        assert obj["a"] in ("p", "q") and isinstance(obj["n"], bool)


async def test_constrained_and_free_streams_share_a_step(runner: Runner) -> None:
    c = await compile_async(gbnf_grammar('root ::= "yes" | "no"'), runner.vocab)
    free = runner.generate(GenerationRequest("Hello", SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)))
    bound = runner.generate(GenerationRequest("Hello", SamplingParams(max_tokens=5, temperature=0, constraint=c)))

    async def text(g) -> str:
        return "".join([d.text async for d in g])

    t_free, t_bound = await asyncio.gather(text(free), text(bound))
    assert t_bound in ("yes", "no")
    assert len(free.usage.__dict__) and free.usage.completion_tokens == 5


def test_objects_are_closed_unless_they_say_otherwise(vocab: Vocab) -> None:
    """As llama.cpp's converter: listed properties only, unless additionalProperties says more."""
    tok = tokenizer_for(vocab)
    for extra_ok, schema in ((False, {"type": "object", "properties": {"a": {"type": "integer"}}}),
                             (True, {"type": "object", "properties": {"a": {"type": "integer"}},
                                     "additionalProperties": True})):
        m = compile_constraint(schema_grammar(schema), vocab).fork(1)[0]
        toks = tok.tokenize_str('{"a": 1, "b": 2}')
        assert (m.try_consume_tokens(toks) == len(toks)) is extra_ok


def test_forced_tool_call_is_one_call_then_the_end(vocab: Vocab) -> None:
    tok = tokenizer_for(vocab)
    named = {"type": "function", "function": {"name": "get_weather"}}
    m = compile_constraint(tool_call_grammar(WEATHER, named), vocab).fork(1)[0]
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    toks = tok.tokenize_str(call)
    assert m.try_consume_tokens(toks) == len(toks) and m.is_accepting()
    assert m.try_consume_tokens(tok.tokenize_str("\n<tool_call>")) == 0


def test_markers_that_are_special_tokens_may_come_as_those_tokens(vocab: Vocab) -> None:
    """llguidance keeps special tokens out of quoted text: a model whose `<tool_call>` is one
    token could otherwise only spell it. `<s>` (a control token here) stands in for a marker."""
    tok = tokenizer_for(vocab)
    specials = specials_of(vocab)
    bos = specials["<s>"]
    call = tok.tokenize_str('{"a": 1}')

    def takes(grammar: str, toks: list[int]) -> bool:
        m = compile_constraint(grammar, vocab, param="tools").fork(1)[0]
        return m.try_consume_tokens(toks) == len(toks) and m.is_accepting()

    forced = 'start: "<s>" "{\\"a\\": 1}"\n'
    assert takes(lark_grammar(with_specials(forced, specials)), [bos, *call])
    assert takes(lark_grammar(with_specials(forced, specials)), tok.tokenize_str("<s>") + call)  # spelled
    assert not takes(lark_grammar(forced), [bos, *call])
    lazy = lazy_grammar('start: "{\\"a\\": 1}"\n', "<s>", specials=specials)
    text = tok.tokenize_str("Let me see. ")
    assert takes(lazy, [*text, bos, *call]) and takes(lazy, tok.tokenize_str("Let me see. <s>") + call)
    assert takes(lazy, text) and not takes(lazy, [*text, bos])
    assert not takes(lazy_grammar('start: "{\\"a\\": 1}"\n', "<s>"), [*text, bos, *call])


async def test_logprobs_of_tokens_the_grammar_rules_out_are_finite(runner: Runner) -> None:
    """The mask writes -inf into the row: such a token's logprob is OpenAI's -9999.0, not -inf
    (which json writes as the invalid `-Infinity` and orjson, in streams, as null)."""
    c = await compile_async(gbnf_grammar('root ::= "yes" | "no"'), runner.vocab)
    params = SamplingParams(max_tokens=5, temperature=0, constraint=c, logprobs=True, top_logprobs=10)
    lps = [lp async for d in runner.generate(GenerationRequest("Hello", params)) for lp in d.logprobs]
    tops = [t.logprob for lp in lps for t in lp.top]
    assert lps and len(tops) == 10 * len(lps)
    assert min(tops) == -9999.0  # some of the ten are ruled out at every position here
    assert all(math.isfinite(v) for v in tops + [lp.logprob for lp in lps])
    json.dumps([lp.__dict__ for lp in lps], default=lambda t: t.__dict__, allow_nan=False)
