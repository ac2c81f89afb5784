"""Chat rendering and tool-call parsing (pure Python, plus one real GGUF template)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.config import ModelConfig
from appliance.engine.chat import CHATML_TEMPLATE, GEMMA_TEMPLATE, render_chat
from appliance.engine.runner import Runner
from appliance.errors import InvalidRequest
from ggufmaker import Shape, make_gguf

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]


def test_default_gemma_template_merges_system_into_first_user_turn() -> None:
    p = render_chat(None, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}],
                    bos="<bos>", arch="gemma3")
    assert p.prompt == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
                        "<start_of_turn>model\nHello<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n"
                        "<start_of_turn>model\n")
    assert p.add_special is False  # the template wrote the BOS: don't add another
    assert p.stop == ("<end_of_turn>",)


def test_default_chatml_for_other_architectures_adds_bos_by_tokenizer() -> None:
    p = render_chat(None, [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], bos="<s>", arch="llama")
    assert p.prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert p.add_special is True
    assert p.stop == ("<|im_end|>",)


def test_template_errors_and_bad_messages_are_request_errors() -> None:
    with pytest.raises(InvalidRequest):
        render_chat("{{ raise_exception('no system role') }}", [{"role": "user", "content": "x"}])
    with pytest.raises(InvalidRequest):
        render_chat(None, [])
    with pytest.raises(InvalidRequest):
        render_chat(None, [{"content": "no role"}])
    with pytest.raises(InvalidRequest):
        render_chat(None, [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])


def test_tools_in_a_tool_less_template_go_into_the_system_message() -> None:
    p = render_chat(None, [{"role": "user", "content": "find x"}], TOOLS, "auto", arch="llama")
    assert p.tool_parser == "generic"
    assert '"lookup"' in p.prompt and "<tool_call>" in p.prompt
    assert p.grammar and p.grammar_triggers == ("<tool_call>",)
    p_none = render_chat(None, [{"role": "user", "content": "x"}], TOOLS, "none")
    assert p_none.grammar is None
    p_req = render_chat(None, [{"role": "user", "content": "x"}], TOOLS, "required")
    assert p_req.grammar and p_req.grammar_triggers == ()
    with pytest.raises(InvalidRequest):
        render_chat(None, [{"role": "user", "content": "x"}], TOOLS, {"type": "function", "function": {"name": "nope"}})


def test_tool_history_is_rendered_for_tool_less_templates() -> None:
    msgs = [
        {"role": "user", "content": "find x"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    p = render_chat(None, msgs, TOOLS, "auto")
    assert '<tool_call>{"name": "lookup", "arguments": {"q": "x"}}</tool_call>' in p.prompt
    assert "<tool_response>42</tool_response>" in p.prompt


HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>"
    " Reply with <tool_call>{...}</tool_call><|im_end|>\n{% endif %}" + CHATML_TEMPLATE
)


def test_hermes_template_gets_tools_variable_and_hermes_parser() -> None:
    p = render_chat(HERMES_TEMPLATE, [{"role": "user", "content": "x"}], TOOLS, "auto")
    assert p.tool_parser == "hermes"
    assert p.prompt.startswith('<|im_start|>system\n<tools>{"type": "function"')


def test_parse_hermes_llama3_and_plain() -> None:
    from appliance.engine.tools.families import FAMILIES

    fam = {s.name: s for _, s in FAMILIES}
    hermes = render_chat(HERMES_TEMPLATE, [{"role": "user", "content": "x"}], TOOLS, "auto").reader
    p = hermes.read('Sure. <tool_call>\n{"name": "lookup", "arguments": {"q": "a"}}\n</tool_call>'
                    '<tool_call>{"name": "lookup", "arguments": {"q": "b"}}</tool_call>')
    assert p.content == "Sure." and [c.name for c in p.calls] == ["lookup", "lookup"]
    assert [json.loads(c.arguments) for c in p.calls] == [{"q": "a"}, {"q": "b"}]
    from appliance.engine.tools.parse import parse

    p = parse(fam["llama3"], '<|python_tag|>{"name": "lookup", "parameters": {"q": "c"}}')
    assert p.content == "" and json.loads(p.calls[0].arguments) == {"q": "c"}
    p = parse(fam["llama3"], '{"name": "a", "parameters": {}}; {"name": "b", "parameters": {}}')
    assert [c.name for c in p.calls] == ["a", "b"]
    assert hermes.read("just text {not json").content == "just text {not json"
    assert parse(fam["llama3"], '{"answer": 1}').content == '{"answer": 1}'  # JSON, but not a call


def test_gguf_template_is_used_and_catalog_template_wins(tmp_path: Path) -> None:
    path = make_gguf(tmp_path / "t.gguf", Shape(chat_template="{{ bos_token }}GGUF:{{ messages[0]['content'] }}"))
    cfg = ModelConfig(source=f"file://{path}", context=64, parallel=1)
    with Runner([path], cfg, n_threads=1) as r:
        p = r.render_chat([{"role": "user", "content": "hi"}])
        assert p.prompt == f"{r.bos_text}GGUF:hi" and r.bos_text == "<s>"
        assert p.add_special is False
        toks = r.tokenize(p.prompt, add_special=p.add_special, parse_special=True)
        assert toks.count(r.vocab.bos) == 1  # no doubled BOS
    cfg2 = ModelConfig(source=f"file://{path}", context=64, parallel=1, chat_template="CAT:{{ messages[0]['content'] }}")
    with Runner([path], cfg2, n_threads=1) as r:
        assert r.render_chat([{"role": "user", "content": "hi"}]).prompt == "CAT:hi"


def test_gemma_template_constant_is_what_default_picks() -> None:
    from appliance.engine.chat import default_template

    assert default_template("gemma3") is GEMMA_TEMPLATE and default_template("qwen2") is CHATML_TEMPLATE
