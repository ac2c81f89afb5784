"""response_format -> GBNF, and the grammar sampler's fast path on a real vocabulary."""

from __future__ import annotations

import pytest
from llama_cpp.llama_grammar import JSON_GBNF

from appliance.engine.grammar import MAX_SCHEMA_BYTES, grammar_for_response_format, rename_root
from appliance.errors import InvalidRequest


def test_text_and_json_object() -> None:
    assert grammar_for_response_format(None) is None
    assert grammar_for_response_format({"type": "text"}) is None
    assert grammar_for_response_format({"type": "json_object"}) == JSON_GBNF


def test_json_schema_becomes_a_grammar_with_root() -> None:
    g = grammar_for_response_format({"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"enum": ["p", "q"]}}, "required": ["a"]}}})
    assert g is not None and "root ::=" in g
    assert '"\\"p\\""' in g


@pytest.mark.parametrize("rf", [
    {"type": "json_schema"},
    {"type": "json_schema", "json_schema": {"name": "x"}},
    {"type": "json_schema", "json_schema": {"schema": "not a schema"}},
    {"type": "yaml"},
    "json",
])
def test_bad_response_formats(rf: object) -> None:
    with pytest.raises(InvalidRequest) as ei:
        grammar_for_response_format(rf)  # type: ignore[arg-type]
    assert ei.value.param == "response_format"


def test_schema_size_is_capped() -> None:
    big = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 100}
                                            for i in range(MAX_SCHEMA_BYTES // 100)}}
    with pytest.raises(InvalidRequest, match="larger than"):
        grammar_for_response_format({"type": "json_schema", "json_schema": {"schema": big}})


def test_rename_root_only_renames_the_definition() -> None:
    assert rename_root('root ::= "a" rootish\nrootish ::= "b"', "x") == 'x ::= "a" rootish\nrootish ::= "b"\n'
