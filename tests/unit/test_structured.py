"""Unit tests of nexa.structured without a model: number ranges, a call's fixed text, and the
call parser on streamed pieces. (What the grammars let a real model write, through llama.cpp's
grammar engine, is tested in integration/test_tools.py.)"""

from __future__ import annotations

import json
import re
from fractions import Fraction

from nexa.schemas.text import ChatRequest
from nexa.server.services.repeats import ArrayWatch
from nexa.structured.gbnf import decimal_alternatives, integer_alternatives
from nexa.structured.parser import CallParser, new_parser
from nexa.structured.plan import plan_chat
from nexa.structured.schema import rest_of_object, schema_grammar

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
    },
}
MESSAGES = [{"role": "user", "content": "Add 2"}]


def test_number_ranges_are_exact():
    def regex(alts: list[list[str]]) -> re.Pattern[str]:
        return re.compile("|".join("".join(p if p.startswith("[") else re.escape(p) for p in a) for a in alts))

    for lo, hi in ((-130, 7), (0, 0), (5, 5), (-1000, -999), (9, 1001), (-3, 250)):
        r = regex(integer_alternatives(lo, hi))
        assert all(bool(r.fullmatch(str(v))) == (lo <= v <= hi) for v in range(lo - 200, hi + 200))
        assert not r.fullmatch("-0") and not r.fullmatch("01")

    r = regex(decimal_alternatives(Fraction(-3, 2), Fraction(9, 4), 2))
    for m in range(-300, 300):
        s = f"{'-' if m < 0 else ''}{abs(m) // 100}.{abs(m) % 100:02d}"
        assert bool(r.fullmatch(s)) == (-150 <= m <= 225 and s != "-0.00"), s


def test_a_call_has_its_fixed_text_written_and_its_parse_completes_it():
    # One function callable: its name is written too, with or without parallel calls.
    for parallel in (False, True):
        body = ChatRequest(messages=MESSAGES, tools=[ADD], tool_choice="required", parallel_tool_calls=parallel)
        plan = plan_chat(body)
        assert plan is not None and plan.call is not None and plan.grammar is None
        assert plan.call.head == '<tool_call>\n{"name": "add", "arguments": '
        assert plan.call.tail == "}\n</tool_call>"
        assert "<tool_call>" not in plan.call.rest  # the grammar covers the arguments alone
        parser = new_parser(plan)
        assert [(i, c.name if c else None) for i, c, _ in parser.feed(plan.call.head).calls] == [(0, "add")]
        parser.feed('{"a": 2}')
        parser.feed(plan.call.tail)
        assert [(c.name, json.loads(c.arguments)) for c in parser.complete_calls] == [("add", {"a": 2})]


def test_the_model_chooses_the_function_among_several():
    sub = {"type": "function", "function": {**ADD["function"], "name": "sub"}}
    for choice in ("auto", "required"):
        plan = plan_chat(ChatRequest(messages=MESSAGES, tools=[ADD, sub], tool_choice=choice))
        assert plan is not None and plan.call is not None
        assert plan.call.head == '<tool_call>\n{"name": '
        assert '"\\"add\\""' in plan.call.rest and '"\\"sub\\""' in plan.call.rest


def test_streamed_pieces_join_into_the_whole_calls():
    text = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "s": "}\\""}}\n</tool_call>\n' * 2
    whole = CallParser(calls_only=False)
    whole.feed(text)
    streamed = CallParser(calls_only=False)
    pieces: dict[int, str] = {}
    for ch in text:
        for index, _call, piece in streamed.feed(ch).calls:
            pieces[index] = pieces.get(index, "") + piece
    assert len(whole.complete_calls) == 2
    assert [c.arguments for c in streamed.complete_calls] == [c.arguments for c in whole.complete_calls]
    assert [pieces[0], pieces[1]] == [c.arguments for c in whole.complete_calls]
    assert json.loads(whole.complete_calls[0].arguments) == {"a": 1, "s": '}"'}


def test_text_that_does_not_open_a_call_passes_through():
    parser = CallParser(calls_only=False)
    assert parser.feed("Hello").text == "Hello" and parser.feed(" <tool_call>").text == " <tool_call>"
    assert parser.calls == []


def test_an_array_is_cut_where_its_items_start_repeating():
    def first_repeat(text: str) -> tuple[str, str] | None:
        watch = ArrayWatch()
        for ch in text:  # a character at a time, as tokens may split anywhere
            found = watch.feed(ch)
            if found:
                return found.key, text[: found.cut]
        return None

    assert first_repeat('{"stops": ["LA", "Santa Barbara", "Santa Barbara", "Santa') == (
        "stops", '{"stops": ["LA", "Santa Barbara"'
    )
    pairs = '"f", "arguments": {"n": 1, "p": [[1, 2], [1, 2],'
    assert first_repeat(pairs) == ("p", '"f", "arguments": {"n": 1, "p": [[1, 2]')
    assert first_repeat('{"a": [1, 2, 1, 2], "s": "[1, 1, 1]", "b": [{"x": [3, 3, 3]}]}') is None


def test_the_rest_of_an_object_after_a_member():
    schema = {
        "type": "object",
        "properties": {"a": {"type": "array"}, "b": {"type": "integer"}, "c": {"enum": ["x"]}},
        "required": ["a", "c"],
    }
    grammar = rest_of_object(schema, "a", "tools")
    assert grammar is not None
    members = " ".join(line for line in grammar.splitlines() if line.startswith(("root", "rest", "members")))
    assert "kv-b" in members and "kv-c" in members and "kv-a" not in members
    assert rest_of_object(schema, "z", "tools") is None
    assert rest_of_object({"type": "object"}, "a", "tools") is None


def test_an_enum_of_plain_values_beside_type_array_is_the_items_enum():
    # Literally no array satisfies it; BFCL's user-written functions mean "an array of these".
    grammar = schema_grammar({"type": "array", "items": {"type": "string"}, "enum": ["trust", "buzz"]}, "tools")
    enum = next(line for line in grammar.splitlines() if line.startswith("enum"))
    assert '"\\"trust\\""' in enum and '"\\"buzz\\""' in enum
    assert any(line.startswith("array") and "enum" in line for line in grammar.splitlines())
    # An enum of arrays beside type array stays an enum of whole values.
    whole = schema_grammar({"type": "array", "enum": [["a"], ["b", "c"]]}, "tools")
    assert not any(line.startswith("array") for line in whole.splitlines())


def test_value_starts_are_string_values_and_numbers_not_keys():
    from nexa.server.services.grounding import value_starts

    def starts(text: str) -> list[str]:
        return [text[i : i + 3] for i in value_starts(text)]

    assert starts('"get_weather", "arguments": {"city": "Paris", "unit": "celsius"}') == ["Par", "cel"]
    # Escapes, empty strings (no first token to judge), true/null, nested containers.
    assert starts('{"n": -12.5e3, "xs": [1, "a\\"b", ""], "o": {"k": true, "z": null, "s": ""}, "e": []}') == [
        "-12", "1, ", 'a\\"'
    ]
    assert starts('{"a": {"b": [{"c": 7}]}}') == ["7}]"] and starts("no json") == []
