"""The grammars of an answer: a response format's JSON, calls to a plan's tools, or either.

The model cannot write JSON that fails its schema, nor a call whose arguments fail theirs:

    none + format:  one pass under the format's JSON grammar
    calls:          in stages (nexa.server.services.calls), one call at a time

A call is written as `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` (the form of
Hermes/Qwen-style models). Its fixed opening (`head`, with the name when only one function
may be called) is written into the prompt rather than decoded, and its fixed closing (`tail`)
added after the arguments: the model decodes only what it has to decide, the same way with
or without parallel calls. Under "auto" a text answer has a grammar of its own (`text_answer`):
the response format's JSON, or text that does not open like a call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nexa.errors import InvalidRequest
from nexa.schemas.text import ResponseFormat
from nexa.structured.builder import GrammarBuilder
from nexa.structured.gbnf import json_literal, literal
from nexa.structured.schema import schema_rule

if TYPE_CHECKING:  # plan.py builds its grammar here: a runtime import would be circular
    from nexa.structured.plan import Plan

MAX_CALLS = 4  # calls in one answer when parallel calls are allowed: a bound keeps it finite
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
CALL_TAIL = "}\n" + CALL_CLOSE  # closes the call object after its arguments
# Where the prompt is our own (a template that knows no tools), a text answer under "auto" opens
# with this word, so that the first decision is between two short openings both named in the
# prompt, as llama-cpp-python's chatml-function-calling does; it is never sent to the client.
MESSAGE = "message:"


@dataclass(frozen=True)
class CallGrammar:
    """One call: `head` is written, `rest` (a GBNF grammar) decoded, `tail` written."""

    head: str
    rest: str
    name: str | None = None  # the function, where only one may be called (the head names it)
    tail: str = CALL_TAIL


@dataclass(frozen=True)
class AnswerGrammar:
    text: str | None = None  # the grammar of a one-pass answer: a response format's JSON
    call: CallGrammar | None = None  # where the answer may hold calls
    text_answer: str | None = None  # under "auto": the grammar of an answer in text


def response_rule(b: GrammarBuilder, fmt: ResponseFormat | None) -> str | None:
    """The rule for a JSON response format (None for plain text)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        if fmt.schema_ is not None:  # llama.cpp's and vLLM's extension: a schema on json_object
            return schema_rule(b, fmt.schema_, "response_format.schema")
        return b.any_object()
    spec = fmt.json_schema
    if not isinstance(spec, dict):
        where = "response_format.json_schema"
        raise InvalidRequest(f'{where} is required: {{"name": ..., "schema": {{...}}}}.', param=where)
    if "schema" in spec:
        return schema_rule(b, spec["schema"], "response_format.json_schema.schema")
    if "name" in spec:
        raise InvalidRequest("response_format.json_schema.schema is required.", param="response_format.json_schema")
    return schema_rule(b, spec, "response_format.json_schema")  # a bare schema, as some clients send


def response_format_grammar(fmt: ResponseFormat | None, stop: Any = None) -> str | None:
    """The grammar for /v1/completions' response_format (None for plain text)."""
    b = GrammarBuilder()
    rule = response_rule(b, fmt)
    if rule is None:
        return None
    if stop:
        raise InvalidRequest(
            "stop cannot be combined with a JSON response_format: a stop string could cut the JSON short.",
            param="stop",
        )
    return b.render(rule)


def plan_grammar(plan: Plan, fmt: ResponseFormat | None) -> AnswerGrammar | None:
    """The grammars for a chat answer under `plan` (None when the answer is free text)."""
    b = GrammarBuilder()
    json_rule = response_rule(b, fmt)
    # Every tool's schema is checked, even those this answer cannot call.
    args = {t.name: schema_rule(b, t.parameters, _schema_param(plan, i)) for i, t in enumerate(plan.tools)}
    if not plan.calls:
        return None if json_rule is None else AnswerGrammar(b.render(json_rule))
    callable_ = [t for t in plan.tools if plan.choice != "named" or t.name == plan.named]
    head, name = f'{CALL_OPEN}\n{{"name": ', None
    if len(callable_) == 1:  # the name is known too: 25 fewer tokens to decode for a small call
        name = callable_[0].name
        head += f'{json.dumps(name)}, "arguments": '
        rest = args[name]
    else:
        then = literal(', "arguments": ')
        rest = b.rule("call", " | ".join(f"{json_literal(t.name)} {then} {args[t.name]}" for t in callable_))
    # A text answer may not start with "<" (nor a blank), so that it never opens like a call.
    other = json_rule or b.rule("text", r"[^<\x09-\x0D ] [^\x00]*")
    return AnswerGrammar(call=CallGrammar(head, b.render(rest), name), text_answer=b.render(other))


def _schema_param(plan: Plan, i: int) -> str:
    return f"functions[{i}].parameters" if plan.functions_api else f"tools[{i}].function.parameters"
