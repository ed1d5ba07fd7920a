"""Schemas past the compiler's size limits are a 400 naming the limit, decided at once (issue 16:
each of these was a 500, a hang, or minutes of sampling). Limits and their reasons: Limits' docstring."""

from __future__ import annotations

import time
from typing import Any

import pytest

from nexa.errors import InvalidRequest
from nexa.schemas.text import ChatRequest
from nexa.structured.builder import LIMITS
from nexa.structured.plan import plan_chat
from nexa.structured.schema import schema_grammar


def nested(levels: int) -> dict[str, Any]:
    s: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        s = {"type": "array", "items": s}
    return s


PATHOLOGICAL = [
    (nested(400), "nested deeper"),
    ({"type": "object", "properties": {"a": nested(400)}}, "nested deeper"),
    ({"enum": [f"v{i}" for i in range(100_000)]}, "JSON values"),
    ({"enum": [f"v{i}" for i in range(LIMITS.max_enum_values + 1)]}, "enum values"),
    ({"type": "string", "minLength": 100_000}, "minLength"),
    ({"type": "array", "minItems": 100_000}, "minItems"),
    ({"type": "array", "minItems": 3000, "maxItems": 1e9}, "minItems"),
    ({"type": "object", "minProperties": 100_000}, "minProperties"),
    ({"type": "number", "exclusiveMinimum": 1e22}, "15-digit"),
    ({"type": "number", "maximum": -1e22}, "15-digit"),
    ({"type": "string", "pattern": "((a{0,100}){0,100}){0,100}"}, "nested"),
    ({"type": "string", "pattern": "((a*)*)*"}, "nested"),
    ({"type": "string", "pattern": "(a{0,100}){0,100}"}, "multiply"),
    ({"type": "string", "pattern": "a{5000}"}, "repeat count"),
]


@pytest.mark.parametrize(("schema", "says"), PATHOLOGICAL, ids=[f"{i}-{s}" for i, (_, s) in enumerate(PATHOLOGICAL)])
def test_pathological_schemas_are_400_at_once(schema, says):
    started = time.monotonic()
    with pytest.raises(InvalidRequest) as err:
        schema_grammar(schema, "response_format")
    assert time.monotonic() - started < 5
    assert err.value.param == "response_format" and says in str(err.value) and "limit" in str(err.value)


def test_enum_values_count_across_every_tool_of_a_request():
    half = {"type": "string", "enum": [f"v{i}" for i in range(LIMITS.max_enum_values // 2 + 1)]}
    tools = [
        {"type": "function", "function": {"name": f"f{n}", "parameters": {"type": "object", "properties": {"a": half}}}}
        for n in range(2)
    ]
    with pytest.raises(InvalidRequest) as err:
        plan_chat(ChatRequest(messages=[{"role": "user", "content": "hi"}], tools=tools))
    assert err.value.param == "tools[1].function.parameters"


def test_sizes_within_the_limits_still_compile():
    for schema in (
        nested(20),
        {"enum": [f"v{i}" for i in range(LIMITS.max_enum_values)]},
        {"type": "string", "minLength": 2000},
        {"type": "array", "minItems": 3, "maxItems": 1e9},
        {"type": "number", "minimum": -1e300, "maximum": 1e300},  # bounds past the digits: no bound
        {"type": "number", "exclusiveMinimum": 0, "maximum": 1e22},
        {"type": "integer", "minimum": 0, "maximum": 9007199254740991},
        {"type": "string", "pattern": "^([a-z]+\\.)*[a-z]+$"},
        {"type": "string", "pattern": "^a*$", "maxLength": 100_000},
    ):
        assert "root ::=" in schema_grammar(schema, "p")
