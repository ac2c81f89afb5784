"""Native tool-call syntax per family: detected from the template, parsed whole and while
streaming (id and name first, then argument pieces), parallel calls, reasoning split.
Cases: every template of llama.cpp's collection that renders tool calls (a call rendered
through the template is parsed back), and outputs quoted from llama.cpp's tests/test-chat.cpp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.engine.chatout import OutputReader
from appliance.engine.messages import prepare, tool_definitions
from appliance.engine.reasoning import thinking_for
from appliance.engine.template import compiled
from appliance.engine.tools.families import FAMILIES, detect
from appliance.engine.tools.parse import lead_in, parse
from appliance.engine.tools.stream import DeltaStream

TEMPLATES = Path(__file__).parent / "data" / "templates"
ALL = sorted(p.name for p in TEMPLATES.glob("*.jinja"))
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "description": "City"},
                                     "days": {"type": "integer", "description": "Days"}},
    "required": ["city"]}}}]
SCHEMAS = {"get_weather": TOOLS[0]["function"]["parameters"]}
FAMILY = {syn.name: syn for _, syn in FAMILIES}


def _call(cid: str, args: dict) -> dict:
    return {"id": cid, "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(args)}}


def rendered_output(name: str, calls: list[dict]) -> tuple[str, str]:
    """(generation prompt, what a model trained on this template writes for `calls`): the
    template's rendering of an assistant turn with the calls, after its generation prompt."""
    tpl = compiled((TEMPLATES / name).read_text(), "<s>", "</s>")
    user = [{"role": "user", "content": "USER_ONE"}]
    full = tpl.render(prepare(user + [{"role": "assistant", "content": None, "tool_calls": calls}], tpl.caps, True),
                      tool_definitions(TOOLS), add_generation_prompt=False)
    gen = tpl.render(prepare(user, tpl.caps, True), tool_definitions(TOOLS), add_generation_prompt=True)
    h, g = full[full.index("USER_ONE"):], gen[gen.index("USER_ONE"):]
    if h.startswith(g):
        return gen, h[len(g):]
    k = 0  # the history writes the turn differently (an empty thinking block): from where they part
    while k < min(len(h), len(g)) and h[k] == g[k]:
        k += 1
    while k > 0 and h[k - 1] not in ">]\n ":
        k -= 1
    return gen, h[k:]


WITH_CALLS = [n for n in ALL if compiled((TEMPLATES / n).read_text(), "<s>", "</s>").caps.tool_calls]


def test_every_template_that_speaks_tools_has_its_family() -> None:
    assert len(WITH_CALLS) == 63
    speaking = [n for n in ALL if compiled((TEMPLATES / n).read_text(), "<s>", "</s>").caps.tools or n in WITH_CALLS]
    assert len(speaking) == 66
    missing = [n for n in speaking
               if detect((TEMPLATES / n).read_text(), compiled((TEMPLATES / n).read_text(), "<s>", "</s>").caps.call_text) is None]
    assert missing == []  # "generic" is left to the 4 templates that know no tools


def test_templates_that_show_no_calls_get_them_in_the_family_syntax() -> None:
    from appliance.engine.chat import render_chat

    conv = [{"role": "user", "content": "x"},
            {"role": "assistant", "content": None, "tool_calls": [_call("c1", {"city": "PARIS"})]},
            {"role": "tool", "tool_call_id": "c1", "content": "RESULT"}]
    p = render_chat((TEMPLATES / "LFM2-8B-A1B.jinja").read_text(), conv, TOOLS, "auto").prompt
    assert '<|tool_call_start|>[get_weather(city="PARIS")]<|tool_call_end|>' in p and "RESULT" in p


@pytest.mark.parametrize("name", WITH_CALLS)
def test_calls_rendered_by_the_template_parse_back_whole_and_streamed(name: str) -> None:
    src = (TEMPLATES / name).read_text()
    caps = compiled(src, "<s>", "</s>").caps
    syn = detect(src, caps.call_text)
    assert syn is not None
    # Muse writes one call per message (each ends the turn): one call is what a turn holds
    parallel = caps.parallel_calls and syn.name != "muse"
    args = [{"city": "PARIS", "days": 3}] + ([{"city": "ROME"}] if parallel else [])
    prompt, out = rendered_output(name, [_call(f"call_{i}", a) for i, a in enumerate(args)])
    text = lead_in(prompt, syn) + out
    p = parse(syn, text, schemas=SCHEMAS)
    assert [(c.name, json.loads(c.arguments)) for c in p.calls] == [("get_weather", a) for a in args]
    # streamed one character at a time: name before arguments, pieces that add up
    stream, deltas = DeltaStream(), []
    for i in range(len(out) + 1):
        deltas += stream.update(parse(syn, lead_in(prompt, syn) + out[:i], final=i == len(out), schemas=SCHEMAS),
                                final=i == len(out))
    calls: dict[int, dict] = {}
    for d in deltas:
        for tc in d.get("tool_calls", []):
            c = calls.setdefault(tc["index"], {"id": tc.get("id"), "name": tc["function"].get("name"), "args": ""})
            assert c["id"] and c["name"] == "get_weather"  # id and name came in the first delta
            c["args"] += tc["function"]["arguments"]
    assert [json.loads(c["args"]) for _, c in sorted(calls.items())] == args
    assert len({c["id"] for c in calls.values()}) == len(args)
    assert not any("<tool" in d.get("content", "") or "[TOOL" in d.get("content", "") for d in deltas)


# Outputs as llama.cpp's tests/test-chat.cpp states them.
CASES = [
    ("hermes", 'Sure.<tool_call>\n{"name": "get_weather", "arguments": {"city": "A"}}\n</tool_call>', "Sure.", [{"city": "A"}]),
    ("mistral-v11", '[TOOL_CALLS]get_weather[ARGS]{"city": "A"}[TOOL_CALLS]get_weather[ARGS]{"city": "B"}', "",
     [{"city": "A"}, {"city": "B"}]),
    ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "A"}, "id": "123456789"}]', "", [{"city": "A"}]),
    ("llama3", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "A"}}', "", [{"city": "A"}]),
    ("llama3", '{"type": "function", "name": "get_weather", "parameters": {"city": "A"}}', "", [{"city": "A"}]),
    ("deepseek-v3.1", 'CONTENT<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "A"}<｜tool▁call▁end｜>'
     '<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "B"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>', "CONTENT",
     [{"city": "A"}, {"city": "B"}]),
    ("deepseek-r1", '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "A"}\n```'
     '<｜tool▁call▁end｜><｜tool▁calls▁end｜>', "", [{"city": "A"}]),
    ("kimi-k2", '<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>'
     '{"city": "A"}<|tool_call_end|><|tool_calls_section_end|>', "", [{"city": "A"}]),
    ("glm-4.5", "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>A</arg_value>\n<arg_key>days</arg_key>\n"
     "<arg_value>2</arg_value>\n</tool_call>", "", [{"city": "A", "days": 2}]),
    ("glm-4.5", "<tool_call>get_weather<arg_key>city</arg_key><arg_value>上海</arg_value></tool_call>", "", [{"city": "上海"}]),
    ("qwen3-coder", "<tool_call>\n<function=get_weather>\n<parameter=city>\nA\n</parameter>\n<parameter=days>\n2\n"
     "</parameter>\n</function>\n</tool_call>", "", [{"city": "A", "days": 2}]),
    ("seed-oss", "<seed:tool_call>\n<function=get_weather>\n<parameter=city>A</parameter>\n</function>\n</seed:tool_call>\n"
     "<seed:tool_call>\n<function=get_weather>\n<parameter=city>B</parameter>\n</function>\n</seed:tool_call>", "",
     [{"city": "A"}, {"city": "B"}]),
    ("minimax-m2", '<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">A</parameter>\n'
     '<parameter name="days">2</parameter>\n</invoke>\n</minimax:tool_call>', "", [{"city": "A", "days": 2}]),
    ("command-r7b", '<|START_ACTION|>[\n    {"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "A"}}\n'
     ']<|END_ACTION|>', "", [{"city": "A"}]),
    ("nemotron-v2", '<TOOLCALL>[{"name": "get_weather", "arguments": {"city": "A"}}]</TOOLCALL>', "", [{"city": "A"}]),
    ("granite", '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "A"}}]', "", [{"city": "A"}]),
    ("apertus", '<|tools_prefix|>[{"get_weather": {"city": "A"}}]<|tools_suffix|>', "", [{"city": "A"}]),
    ("firefunction-v2", ' functools[{"name": "get_weather", "arguments": {"city": "A"}}]', "", [{"city": "A"}]),
    ("lfm2", 'Let me check.<|tool_call_start|>[get_weather(city="A"), get_weather(city="B", days=2)]<|tool_call_end|>',
     "Let me check.", [{"city": "A"}, {"city": "B", "days": 2}]),
    ("functionary-v3.1", '<function=get_weather>{"city": "A"}</function>', "", [{"city": "A"}]),
    ("functionary-v3.2", '>>>all\nLet me look.>>>get_weather\n{"city": "A"}', "Let me look.", [{"city": "A"}]),
    ("gpt-oss", '<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>commentary '
     'to=functions.get_weather <|constrain|>json<|message|>{"city": "A"}<|call|>', "", [{"city": "A"}]),
]


@pytest.mark.parametrize("family,text,content,args", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_llama_cpp_cases(family: str, text: str, content: str, args: list[dict]) -> None:
    p = parse(FAMILY[family], text, schemas=SCHEMAS)
    assert p.content == content
    assert [(c.name, json.loads(c.arguments)) for c in p.calls] == [("get_weather", a) for a in args]


def test_a_truncated_call_is_text_and_a_partial_marker_is_never_streamed() -> None:
    hermes = FAMILY["hermes"]
    assert parse(hermes, 'Hi <tool_call>{"name": "get_weather", "argu').calls == []
    assert parse(hermes, "Hi <tool", final=False).content == "Hi "  # '<tool' may become the marker
    assert parse(hermes, "Hi <tool", final=True).content == "Hi <tool"
    assert parse(FAMILY["lfm2"], "<|tool_call_start|>[get_weather(city=", final=True).calls == []
    assert parse(hermes, "plain {not json").content == "plain {not json"


def test_reasoning_split_from_tags_the_template_writes() -> None:
    r1 = (TEMPLATES / "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja").read_text()
    prompt = "x<｜Assistant｜><think>\n"
    th = thinking_for(r1, prompt)
    assert th is not None and th.starts_inside
    reader = OutputReader(thinking=th)
    p = reader.read("I should answer.\n</think>\n\nHello.")
    assert (p.reasoning, p.content) == ("I should answer.", "Hello.")
    stream, deltas = DeltaStream(), []
    text = "I should answer.\n</think>\n\nHello."
    for i in range(len(text) + 1):
        deltas += stream.update(reader.read(text[:i], final=i == len(text)), final=i == len(text))
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "I should answer."
    assert "".join(d.get("content", "") for d in deltas) == "Hello."
    inline = OutputReader(thinking=th, separate=False).read("I should answer.\n</think>\n\nHello.")
    assert inline.reasoning == "" and "</think>" in inline.content
    q3 = (TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text()
    th3 = thinking_for(q3, "<|im_start|>assistant\n")
    assert th3 is not None and not th3.starts_inside
    p = OutputReader(tools=FAMILY["hermes"], thinking=th3).read(
        '<think>Use the tool.</think>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "A"}}\n</tool_call>')
    assert p.reasoning == "Use the tool." and p.content == "" and p.calls[0].name == "get_weather"
    c7 = (TEMPLATES / "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja").read_text()
    th7 = thinking_for(c7, "<|CHATBOT_TOKEN|>")
    p = OutputReader(tools=FAMILY["command-r7b"], thinking=th7).read(
        "<|START_THINKING|>I'm\nthinking<|END_THINKING|><|START_ACTION|>[\n    {\"tool_call_id\": \"0\", "
        "\"tool_name\": \"get_weather\", \"parameters\": {\"city\": \"A\"}}\n]<|END_ACTION|>")
    assert p.reasoning == "I'm\nthinking" and json.loads(p.calls[0].arguments) == {"city": "A"}


def test_harmony_channels_give_reasoning_content_and_calls() -> None:
    reader = OutputReader(harmony=True)
    p = reader.read("<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Hi.")
    assert (p.reasoning, p.content, p.calls) == ("Think.", "Hi.", [])
    inline = OutputReader(harmony=True, separate=False).read("<|channel|>analysis<|message|>Think.<|end|>"
                                                             "<|start|>assistant<|channel|>final<|message|>Hi.")
    assert inline.content == "Think.Hi." and inline.reasoning == ""


UNIQUE = list({syn.name: syn for _, syn in FAMILIES}.values())


@pytest.mark.parametrize("syn", UNIQUE, ids=[s.name for s in UNIQUE])
def test_written_calls_parse_back(syn) -> None:  # type: ignore[no-untyped-def]
    from appliance.engine.tools.grammar import write_calls

    calls = [("get_weather", {"city": "A", "days": 2}), ("get_weather", {"city": "B"})]
    if syn.kind == "harmony":
        return  # gpt-oss calls are whole messages; the template renders them (see the round trip)
    p = parse(syn, write_calls(syn, calls), schemas=SCHEMAS)
    assert [(c.name, json.loads(c.arguments)) for c in p.calls] == calls


@pytest.mark.parametrize("syn", UNIQUE, ids=[s.name for s in UNIQUE])
def test_every_family_grammar_holds_what_the_family_writes(syn, vocab) -> None:  # type: ignore[no-untyped-def]
    """Through llguidance, as requests use them: the forced grammar takes the calls the family
    writes (a string parameter's text ends at its closing tag, the lexer being greedy), the
    lazy one takes text, then the calls; one call only when parallel calls are off."""
    from appliance.engine.guidance import compile_constraint, lark_grammar, lazy_grammar, tokenizer_for
    from appliance.engine.tools.grammar import tool_call_grammar, triggers, write_calls

    if syn.kind == "harmony":
        return  # gpt-oss calls are whole messages (see the HTTP round trip)
    tok = tokenizer_for(vocab)

    def takes(grammar: str, text: str) -> bool:
        m = compile_constraint(grammar, vocab, param="tools").fork(1)[0]
        toks = tok.tokenize_str(text)
        return m.try_consume_tokens(toks) == len(toks) and m.is_accepting()

    days = {} if "{type}" in syn.param_fmt else {"days": 2}  # history writes no JSON-schema types
    two = write_calls(syn, [("get_weather", {"city": "Oslo\nNorth", **days}), ("get_weather", {"city": "B"})])
    one = write_calls(syn, [("get_weather", {"city": "Oslo", **days})])
    if tok.decode_str(tok.tokenize_str(two)) != two:
        pytest.skip("the test vocabulary cannot spell these markers")  # e.g. DeepSeek's "▁" reads as a space
    assert takes(lark_grammar(tool_call_grammar(syn, TOOLS, None, True)), two)
    assert takes(lark_grammar(tool_call_grammar(syn, TOOLS, "get_weather", False)), one)
    assert not takes(lark_grammar(tool_call_grammar(syn, TOOLS, "get_weather", False)), two)
    trig = triggers(syn)[0]
    lazy = lazy_grammar(tool_call_grammar(syn, TOOLS, None, True, lazy=True), trig)
    assert takes(lazy, "Let me look. " + two) and takes(lazy, "No call here.")


@pytest.mark.parametrize("name", WITH_CALLS)
def test_requests_get_the_family_grammar_not_the_generic_one(name: str) -> None:
    from appliance.engine.chat import render_chat

    src = (TEMPLATES / name).read_text()
    auto = render_chat(src, [{"role": "user", "content": "hi"}], TOOLS, "auto", bos="<s>", eos="</s>")
    syn = auto.reader.tools
    assert syn is not None and auto.tool_parser == syn.name != "generic"
    assert auto.grammar and auto.grammar_triggers and auto.grammar_triggers[0] in (*syn.start, " to=functions.")
    forced = render_chat(src, [{"role": "user", "content": "hi"}], TOOLS, "required", bos="<s>", eos="</s>")
    assert forced.grammar and forced.grammar_triggers == ()
    for marker in syn.preserved:  # the parser's markers are not cut off as stop strings
        assert marker not in forced.stop
