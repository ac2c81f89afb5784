"""Every real chat template of llama.cpp's collection (tests/data/templates) renders plain,
multi-turn and tool conversations, with what each template refuses worked around by probing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from appliance.engine.chat import render_chat
from appliance.engine.template import compiled

TEMPLATES = Path(__file__).parent / "data" / "templates"
ALL = sorted(p.name for p in TEMPLATES.glob("*.jinja"))

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string", "description": "City"}},
                                               "required": ["city"]}}}]
SYSTEM = {"role": "system", "content": "SYSTEM_TEXT"}
PLAIN = [SYSTEM, {"role": "user", "content": "USER_ONE"}]
MULTI = PLAIN + [{"role": "assistant", "content": "ASSISTANT_ONE"}, {"role": "user", "content": "USER_TWO"}]


def call(cid: str, city: str) -> dict:
    return {"id": cid, "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}


TOOL_CONV = [SYSTEM, {"role": "user", "content": "USER_ONE"},
             {"role": "assistant", "content": None, "tool_calls": [call("call_a", "PARIS"), call("call_b", "ROME")]},
             {"role": "tool", "tool_call_id": "call_a", "content": "RESULT_A"},
             {"role": "tool", "tool_call_id": "call_b", "content": "RESULT_B"},
             {"role": "assistant", "content": "ASSISTANT_ONE"}, {"role": "user", "content": "USER_TWO"}]


def source(name: str) -> str:
    return (TEMPLATES / name).read_text()


def render(name: str, msgs: list, tools: list | None = None, **kw):  # type: ignore[no-untyped-def]
    return render_chat(source(name), msgs, tools, "auto" if tools else None, bos="<s>", eos="</s>", **kw)


def test_the_whole_collection_is_here() -> None:
    assert len(ALL) == 70


@pytest.mark.parametrize("name", ALL)
def test_plain_and_multi_turn_render_every_message(name: str) -> None:
    p = render(name, PLAIN).prompt
    assert "SYSTEM_TEXT" in p and "USER_ONE" in p
    p = render(name, MULTI).prompt
    assert all(t in p for t in ("SYSTEM_TEXT", "USER_ONE", "USER_TWO"))


@pytest.mark.parametrize("name", ALL)
def test_tool_conversation_renders_calls_and_results(name: str) -> None:
    p = render(name, TOOL_CONV, TOOLS).prompt
    assert all(t in p for t in ("SYSTEM_TEXT", "USER_ONE", "USER_TWO", "PARIS", "ROME", "RESULT_A", "RESULT_B"))
    if compiled(source(name), "<s>", "</s>").caps.tools:
        assert "get_weather" in p  # the template's own tool listing, not ours


def test_object_arguments_found_by_probing() -> None:
    caps = compiled(source("Qwen3-Coder.jinja"), "<s>", "</s>").caps
    assert caps.object_arguments  # it iterates arguments|items
    p = render("Qwen3-Coder.jinja", TOOL_CONV, TOOLS).prompt
    assert "<parameter=city>\nPARIS\n</parameter>" in p
    p = render("google-gemma-4-31B-it.jinja", TOOL_CONV, TOOLS).prompt  # its own argument syntax, not JSON
    assert '<|tool_call>call:get_weather{city:<|"|>PARIS<|"|>}<tool_call|>' in p
    # DeepSeek R1 prints the arguments as they come: a mapping would show as a Python dict
    assert not compiled(source("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"), "<s>", "</s>").caps.object_arguments
    assert '```json\n{"city": "PARIS"}\n```' in render("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", TOOL_CONV, TOOLS).prompt


def test_null_content_printed_as_none_is_sent_as_empty() -> None:
    name = "CohereForAI-c4ai-command-r-plus-tool_use.jinja"
    assert not compiled(source(name), "<s>", "</s>").caps.null_content
    assert "None" not in render(name, TOOL_CONV, TOOLS).prompt


def test_system_role_refused_is_folded_into_the_first_user_turn() -> None:
    assert not compiled(source("google-gemma-2-2b-it.jinja"), "<s>", "</s>").caps.system_role
    p = render("google-gemma-2-2b-it.jinja", MULTI).prompt
    assert "<start_of_turn>user\nSYSTEM_TEXT\n\nUSER_ONE<end_of_turn>" in p


def test_mistral_alternation_and_nine_character_ids() -> None:
    name = "mistralai-Mistral-Nemo-Instruct-2407.jinja"
    caps = compiled(source(name), "<s>", "</s>").caps
    assert caps.alternation and caps.short_ids
    p = render(name, [{"role": "user", "content": "A"}, {"role": "user", "content": "B"}]).prompt
    assert "[INST]A\n\nB[/INST]" in p
    ids = re.findall(r'"id": "([^"]+)"', render(name, TOOL_CONV, TOOLS).prompt)
    assert len(ids) == 2 and all(len(i) == 9 and i.isalnum() for i in ids) and ids[0] != ids[1]


def test_llama3_single_call_turns_get_one_call_and_its_result_each() -> None:
    p = render("meta-llama-Llama-3.1-8B-Instruct.jinja", TOOL_CONV, TOOLS).prompt
    assert p.index("PARIS") < p.index("RESULT_A") < p.index("ROME") < p.index("RESULT_B")


def test_firefunction_gets_its_functions_text_and_date() -> None:
    p = render("fireworks-ai-llama-3-firefunction-v2.jinja", PLAIN, TOOLS).prompt
    assert '"name": "get_weather"' in p and "Today is " in p


def test_tool_use_variant_is_chosen_only_when_tools_are_offered() -> None:
    plain = "{% for m in messages %}PLAIN:{{ m['content'] }}{% endfor %}"
    tool_use = "{% for t in tools %}TOOL:{{ t.function.name }}{% endfor %}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert render_chat(plain, PLAIN[1:], tool_use_template=tool_use).prompt == "PLAIN:USER_ONE"
    assert render_chat(plain, PLAIN[1:], TOOLS, "auto", tool_use_template=tool_use).prompt.startswith("TOOL:get_weather")


def test_template_kwargs_reach_the_template() -> None:
    off = render("Qwen-Qwen3-0.6B.jinja", PLAIN, template_kwargs={"enable_thinking": False}).prompt
    assert off.endswith("<think>\n\n</think>\n\n") and not render("Qwen-Qwen3-0.6B.jinja", PLAIN).prompt.endswith("</think>\n\n")
    high = render("openai-gpt-oss-120b.jinja", PLAIN, template_kwargs={"reasoning_effort": "high"}).prompt
    assert "Reasoning: high" in high and "Reasoning: medium" in render("openai-gpt-oss-120b.jinja", PLAIN).prompt


def test_bad_tool_call_arguments_are_a_clear_request_error() -> None:
    from appliance.errors import InvalidRequest

    bad = [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{not json"}}]}]
    with pytest.raises(InvalidRequest, match=r"messages\[1\].tool_calls\[0\].function.arguments is not valid JSON"):
        render("Qwen3-Coder.jinja", bad, TOOLS)


def test_request_carries_template_kwargs_and_reasoning_effort() -> None:
    from appliance.api.chat_render import template_kwargs
    from appliance.api.schemas import ChatCompletionRequest, parse_body
    from appliance.errors import InvalidRequest

    body = parse_body(ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "x"}],
                                              "chat_template_kwargs": {"enable_thinking": False},
                                              "reasoning_effort": "low"})
    assert template_kwargs(body) == {"enable_thinking": False, "reasoning_effort": "low"}
    with pytest.raises(InvalidRequest, match="may not set messages"):
        parse_body(ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "x"}],
                                           "chat_template_kwargs": {"messages": []}})


def test_earlier_reasoning_is_rendered_the_way_each_template_shows_it() -> None:
    conv = [{"role": "user", "content": "USER_ONE"},
            {"role": "assistant", "content": None, "reasoning_content": "THOUGHT_NEEDLE",
             "tool_calls": [call("call_a", "PARIS")]},
            {"role": "tool", "tool_call_id": "call_a", "content": "RESULT_A"}]
    qwen3 = render("Qwen-Qwen3-0.6B.jinja", conv, TOOLS).prompt  # reads message.reasoning_content
    assert "<think>\nTHOUGHT_NEEDLE\n</think>" in qwen3
    oss = render("openai-gpt-oss-120b.jinja", conv, TOOLS).prompt  # reads message.thinking
    assert "<|channel|>analysis<|message|>THOUGHT_NEEDLE<|end|>" in oss
    done = conv + [{"role": "assistant", "content": "ANSWER", "reasoning_content": "OLD_THOUGHT"},
                   {"role": "user", "content": "USER_TWO"}]
    assert "OLD_THOUGHT" not in render("Qwen-Qwen3-0.6B.jinja", done, TOOLS).prompt  # dropped once answered
