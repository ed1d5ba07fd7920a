"""The grammar of a whole answer: a response format's JSON, calls to a plan's tools, or either.

One GBNF grammar covers the answer, so the model cannot write a call whose arguments fail
their schema:

    required / named:  calls                   calls ::= call ("\\n"? call){0,3}   (one if not parallel)
    auto:              calls | text            text starts with anything but "<"
    auto + format:     calls | json            the response format's JSON instead of free text
    none + format:     json

A call is written as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (the form of
Hermes/Qwen-style models), where each name is tied to its own tool's argument schema.
When the answer is exactly one call of a known function (a named tool_choice, or "required"
with one tool and no parallel calls), the call's fixed opening goes into the prompt and the
grammar covers the arguments alone: the model decodes only what it has to decide.

Parallel calls and "auto" are also decoded in stages (nexa.server.services.calls), each under
a grammar of its own: the choice between a call and text (`decision`), one call (`one_call`),
a text answer (`text_answer`).
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
# Where the prompt is our own (a template that knows no tools), a text answer under "auto" opens
# with this word, so that the first decision is between two short openings both named in the
# prompt, as llama-cpp-python's chatml-function-calling does; it is never sent to the client.
MESSAGE = "message:"


@dataclass(frozen=True)
class AnswerGrammar:
    text: str  # the GBNF grammar
    # A single forced call: its fixed opening, to end the prompt with, and its fixed closing,
    # to add to the output; the grammar then covers the arguments alone.
    prefill: str = ""
    suffix: str = ""
    # The stages, where the answer may hold several calls or text (None: one pass under `text`).
    one_call: str | None = None
    text_answer: str | None = None


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
    """The grammar for a chat answer under `plan` (None when the answer is free text)."""
    b = GrammarBuilder()
    json_rule = response_rule(b, fmt)
    # Every tool's schema is checked, even those this answer cannot call.
    args = {t.name: schema_rule(b, t.parameters, _schema_param(plan, i)) for i, t in enumerate(plan.tools)}
    if not plan.calls:
        return None if json_rule is None else AnswerGrammar(b.render(json_rule))
    callable_ = [t for t in plan.tools if plan.choice != "named" or t.name == plan.named]
    if len(callable_) == 1 and not plan.parallel and plan.choice != "auto":
        # Exactly one call of a known function: everything but its arguments is fixed text, so
        # the model writes the arguments alone (25 fewer tokens to decode for a small call).
        name = callable_[0].name
        return AnswerGrammar(
            b.render(args[name]),
            prefill=f'{CALL_OPEN}\n{{"name": {json.dumps(name)}, "arguments": ',
            suffix=f"}}\n{CALL_CLOSE}",
        )
    heads = " | ".join(
        f'{json_literal(t.name)} ws "," ws "\\"arguments\\"" ws ":" ws {args[t.name]}' for t in callable_
    )
    nl = literal("\n")
    body = f'"{{" ws "\\"name\\"" ws ":" ws ({heads}) ws "}}"'
    call = b.rule("call", f"{literal(CALL_OPEN)} {nl}? {body} {nl}? {literal(CALL_CLOSE)}")
    calls = f"{call} ({nl}? {call}){{0,{MAX_CALLS - 1}}}" if plan.parallel else call
    # The text branch may not start with "<" (nor a blank), so the first character tells a call from text.
    other = json_rule or b.rule("text", r"[^<\x09-\x0D ] [^\x00]*")
    whole = b.render(calls) if plan.choice != "auto" else b.render(f"({calls}) | {other}")
    if not plan.parallel and plan.choice != "auto":
        return AnswerGrammar(whole)
    return AnswerGrammar(
        whole, one_call=b.render(call), text_answer=b.render(other)
    )


def _schema_param(plan: Plan, i: int) -> str:
    return f"functions[{i}].parameters" if plan.functions_api else f"tools[{i}].function.parameters"
