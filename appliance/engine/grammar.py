"""OpenAI `response_format` and tool schemas -> GBNF, through llama-cpp-python's converter.

The schema size is capped: a grammar's cost grows with it, and it is checked against a
token on every step of the stream that asked for it.
"""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from ..errors import InvalidRequest

MAX_SCHEMA_BYTES = 64 * 1024


def schema_to_gbnf(schema: Any, param: str = "response_format") -> str:
    """One JSON schema (a dict) -> GBNF with a `root` rule; InvalidRequest if it can't be."""
    if not isinstance(schema, (dict, bool)):
        raise InvalidRequest("the JSON schema must be an object", param=param)
    text = json.dumps(schema)
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise InvalidRequest(f"the JSON schema is larger than {MAX_SCHEMA_BYTES // 1024} KiB", param=param)
    try:
        return str(json_schema_to_gbnf(text))
    except Exception as e:  # the converter raises bare ValueError/KeyError/... on what it can't do
        raise InvalidRequest(f"unsupported JSON schema: {e}", param=param) from None


def grammar_for_response_format(rf: dict[str, Any] | None) -> str | None:
    """OpenAI response_format -> GBNF; None for plain text.

    {"type": "text"} -> None; {"type": "json_object"} -> any JSON object (or the object's
    "schema" if given, as llama-cpp-python accepts); {"type": "json_schema", "json_schema":
    {"schema": {...}}} -> that schema.
    """
    if rf is None:
        return None
    if not isinstance(rf, dict):
        raise InvalidRequest("response_format must be an object", param="response_format")
    kind = rf.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = rf.get("schema")
        return schema_to_gbnf(schema) if schema is not None else JSON_GBNF
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or "schema" not in js:
            raise InvalidRequest("response_format.json_schema.schema is required", param="response_format")
        return schema_to_gbnf(js["schema"])
    raise InvalidRequest(f"unsupported response_format type {kind!r}", param="response_format")


def rename_root(gbnf: str, name: str) -> str:
    """Rename a converted grammar's `root` rule so it can be embedded in a larger grammar."""
    out = []
    for line in gbnf.splitlines():
        if line.startswith("root ::="):
            line = f"{name} ::=" + line[len("root ::=") :]
        out.append(line)
    return "\n".join(out) + "\n"
