"""Function calling and structured output for the chat, completion and function-calling routers.

A request with tools or a JSON response format becomes a `Plan`: the checked tools, what
tool_choice allows, and one GBNF grammar for the whole answer, so the model cannot write a
call whose arguments fail their schema:

    required / named:  calls                   calls ::= call ("\\n"? call){0,3}   (one if not parallel)
    auto:              calls | text            text starts with anything but "<"
    auto + format:     calls | json            the response format's JSON instead of free text
    none + format:     json

A call is written as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (the form of
Hermes/Qwen-style models), where each name is tied to its own tool's argument schema.
When the answer is exactly one call of a known function (a named tool_choice, or "required"
with one tool and no parallel calls), the call's fixed opening goes into the prompt and the
grammar covers the arguments alone: the model decodes only what it has to decide.

Prompting: where the model's chat template knows tools (rendering with `tools=` changes the
prompt), the template presents them in the form the model was trained on; otherwise a plain
system note lists them and the conversation's calls and results are written out as text.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from nexa.engines.base import Finish, TextDelta, TextEngine
from nexa.engines.gbnf import json_literal, literal
from nexa.engines.grammar import TOOL_NAME, GrammarBuilder
from nexa.errors import InvalidRequest
from nexa.schemas.text import ChatMessage, ChatRequest, ResponseFormat
from nexa.schemas.tools import CallEvents, Tool, ToolCall
from nexa.server.generation import Collected, chat_chunk, chat_logprobs, finish_usage

MAX_CALLS = 4  # calls in one answer when parallel calls are allowed: a bound keeps it finite
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESULT_OPEN, RESULT_CLOSE = "<tool_response>", "</tool_response>"
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
# A tool that only serves to ask a chat template whether it renders tools at all.
_PROBE = Tool("probe", "", NO_PARAMETERS)


@dataclass
class Plan:
    tools: list[Tool] = field(default_factory=list)
    choice: str = "none"  # "auto" | "none" | "required" | "named"
    named: str | None = None
    parallel: bool = True
    functions_api: bool = False  # OpenAI's deprecated `functions`: finish_reason "function_call"
    function_call_field: bool = False  # also answer with the legacy `function_call` (the seed's shape)
    history: bool = False  # the conversation holds calls or their results
    call_names: dict[str, str] = field(default_factory=dict)  # tool_call_id -> function name
    grammar: str | None = None
    # A single forced call: its fixed opening is put in the prompt rather than generated token
    # by token, and its fixed closing is added to the output (see build_grammar).
    prefill: str = ""
    suffix: str = ""

    @property
    def calls(self) -> bool:
        """Whether the model may answer with calls."""
        return bool(self.tools) and self.choice != "none"

    @property
    def custom_prompt(self) -> bool:
        return self.calls or self.history


# -- checking the request ------------------------------------------------------------------


def plan_chat(body: ChatRequest, *, always_call: bool = False) -> Plan | None:
    """Check tools, tool_choice, response_format and tool messages; None for a plain chat.

    `always_call` is /v1/function-calling: its purpose is a call, so "auto" means "the model
    picks which function", and "none" is refused.
    """
    plan = Plan()
    raw_tools, raw_choice, prefix = body.tools, body.tool_choice, "tools"
    if body.functions is not None:
        if body.tools is not None:
            raise InvalidRequest("Send either tools or the deprecated functions, not both.", param="functions")
        if not isinstance(body.functions, list):
            raise InvalidRequest("functions must be a list of function definitions.", param="functions")
        raw_tools = [{"type": "function", "function": f} for f in body.functions]
        raw_choice, prefix = body.function_call, "functions"
        plan.functions_api = plan.function_call_field = True
    plan.tools = parse_tools(raw_tools or [], prefix)
    if always_call and not plan.tools:
        raise InvalidRequest("tools must list at least one function to call.", param="tools")
    choice_param = "function_call" if plan.functions_api else "tool_choice"
    plan.choice, plan.named = parse_choice(raw_choice, plan.tools, choice_param)
    # A named tool_choice asks for that one function: one call, so a small model that would
    # repeat the same call cannot run into max_tokens halfway through a second one.
    plan.parallel = bool(body.parallel_tool_calls) and not plan.functions_api and plan.choice != "named"
    if always_call:
        if plan.choice == "none":
            raise InvalidRequest(
                "tool_choice 'none' asks for no call; use /v1/chat/completions for a text answer.", param="tool_choice"
            )
        plan.choice = "required" if plan.choice == "auto" else plan.choice
        plan.function_call_field = True
    plan.call_names, plan.history = check_messages(body.messages)
    plan.grammar = build_grammar(plan, body.response_format)
    if plan.grammar is not None and body.stop:
        raise InvalidRequest(
            "stop cannot be combined with tools or a JSON response_format: a stop string could cut the JSON short.",
            param="stop",
        )
    if not plan.tools and not plan.history and plan.grammar is None:
        return None
    return plan


def parse_tools(raw: Any, prefix: str = "tools") -> list[Tool]:
    if not isinstance(raw, list):
        raise InvalidRequest(f"{prefix} must be a list of tools.", param=prefix)
    tools: list[Tool] = []
    for i, item in enumerate(raw):
        where = f"{prefix}[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where} must be an object.", param=where)
        kind = item.get("type", "function")
        if kind != "function":
            raise InvalidRequest(f"{where}.type must be 'function', got {kind!r}.", param=f"{where}.type")
        fn = item.get("function")
        if not isinstance(fn, dict):
            raise InvalidRequest(f"{where}.function must be an object with a name.", param=f"{where}.function")
        where = f"{where}.function" if prefix == "tools" else where
        name = fn.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise InvalidRequest(
                f"{where}.name must be 1-64 letters, digits, '_' or '-', got {name!r}.", param=f"{where}.name"
            )
        if any(t.name == name for t in tools):
            raise InvalidRequest(f"{where}.name: two tools are named {name!r}.", param=f"{where}.name")
        description = fn.get("description") or ""
        if not isinstance(description, str):
            raise InvalidRequest(f"{where}.description must be a string.", param=f"{where}.description")
        params = fn.get("parameters")
        params = NO_PARAMETERS if params is None else params
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise InvalidRequest(
                f"{where}.parameters must be a JSON schema of type 'object'.", param=f"{where}.parameters"
            )
        tools.append(Tool(name, description, params))
    return tools


def parse_choice(raw: Any, tools: list[Tool], param: str) -> tuple[str, str | None]:
    if raw is None:
        return ("auto" if tools else "none"), None
    if isinstance(raw, str):
        if raw not in ("auto", "none", "required"):
            raise InvalidRequest(
                f"{param} must be 'auto', 'none', 'required' or {{\"type\": \"function\", \"function\": "
                f'{{"name": ...}}}}, got {raw!r}.',
                param=param,
            )
        if raw != "none" and not tools:
            raise InvalidRequest(f"{param} {raw!r} needs tools to choose from.", param=param)
        return raw, None
    if isinstance(raw, dict):
        fn = raw.get("function") if raw.get("type", "function") == "function" else None
        name = fn.get("name") if isinstance(fn, dict) else raw.get("name")
        if not isinstance(name, str):
            raise InvalidRequest(
                f'{param} must name a function as {{"type": "function", "function": {{"name": ...}}}}.', param=param
            )
        if not any(t.name == name for t in tools):
            known = ", ".join(t.name for t in tools) or "none"
            raise InvalidRequest(f"{param} names {name!r}, which is not among the tools ({known}).", param=param)
        return "named", name
    raise InvalidRequest(f"{param} must be a string or an object.", param=param)


def check_messages(messages: list[ChatMessage]) -> tuple[dict[str, str], bool]:
    """Each tool result must answer a call made earlier; returns (call id -> name, any history)."""
    names: dict[str, str] = {}
    history = False
    for i, m in enumerate(messages):
        if m.role == "assistant" and m.tool_calls:
            history = True
            for j, call in enumerate(m.tool_calls):
                where = f"messages[{i}].tool_calls[{j}]"
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(call.get("id") if isinstance(call, dict) else None, str) or not isinstance(fn, dict):
                    raise InvalidRequest(f"{where} must have an id and a function {{name, arguments}}.", param=where)
                if not isinstance(fn.get("name"), str):
                    raise InvalidRequest(f"{where}.function.name must be a string.", param=f"{where}.function.name")
                _arguments(fn.get("arguments"), f"{where}.function.arguments")
                names[call["id"]] = fn["name"]
        elif m.role == "tool":
            history = True
            where = f"messages[{i}].tool_call_id"
            if not m.tool_call_id:
                raise InvalidRequest(f"{where} is required: say which call this result answers.", param=where)
            if m.tool_call_id not in names:
                raise InvalidRequest(
                    f"{where} {m.tool_call_id!r} does not match a tool call of an earlier assistant message.",
                    param=where,
                )
        elif m.role == "function":
            history = True
            if not m.name:
                where = f"messages[{i}].name"
                raise InvalidRequest(f"{where} is required for a function result.", param=where)
    return names, history


def _arguments(raw: Any, param: str) -> dict[str, Any]:
    """A call's arguments from history: a JSON object, sent as text (OpenAI) or as an object."""
    if raw is None or raw == "":
        return {}
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise InvalidRequest(f"{param} is not valid JSON: {exc}.", param=param) from exc
    if not isinstance(value, dict):
        raise InvalidRequest(f"{param} must be a JSON object.", param=param)
    return value


# -- grammar -------------------------------------------------------------------------------


def response_rule(b: GrammarBuilder, fmt: ResponseFormat | None) -> str | None:
    """The rule for a JSON response format (None for plain text)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        if fmt.schema_ is not None:  # llama.cpp's and vLLM's extension: a schema on json_object
            return b.schema(fmt.schema_, "response_format.schema")
        return b.any_object()
    spec = fmt.json_schema
    if not isinstance(spec, dict):
        where = "response_format.json_schema"
        raise InvalidRequest(f'{where} is required: {{"name": ..., "schema": {{...}}}}.', param=where)
    if "schema" in spec:
        return b.schema(spec["schema"], "response_format.json_schema.schema")
    if "name" in spec:
        raise InvalidRequest("response_format.json_schema.schema is required.", param="response_format.json_schema")
    return b.schema(spec, "response_format.json_schema")  # a bare schema, as some clients send


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


def build_grammar(plan: Plan, fmt: ResponseFormat | None) -> str | None:
    b = GrammarBuilder()
    json_rule = response_rule(b, fmt)
    # Every tool's schema is checked, even those this answer cannot call.
    args = {t.name: b.schema(t.parameters, _schema_param(plan, i)) for i, t in enumerate(plan.tools)}
    if not plan.calls:
        return None if json_rule is None else b.render(json_rule)
    callable_ = [t for t in plan.tools if plan.choice != "named" or t.name == plan.named]
    if len(callable_) == 1 and not plan.parallel and plan.choice != "auto":
        # Exactly one call of a known function: everything but its arguments is fixed text, so
        # the model writes the arguments alone (25 fewer tokens to decode for a small call).
        name = callable_[0].name
        plan.prefill = f'{CALL_OPEN}\n{{"name": {json.dumps(name)}, "arguments": '
        plan.suffix = f"}}\n{CALL_CLOSE}"
        return b.render(args[name])
    heads = " | ".join(
        f'{json_literal(t.name)} ws "," ws "\\"arguments\\"" ws ":" ws {args[t.name]}' for t in callable_
    )
    nl = literal("\n")
    body = f'"{{" ws "\\"name\\"" ws ":" ws ({heads}) ws "}}"'
    call = b.rule("call", f"{literal(CALL_OPEN)} {nl}? {body} {nl}? {literal(CALL_CLOSE)}")
    calls = f"{call} ({nl}? {call}){{0,{MAX_CALLS - 1}}}" if plan.parallel else call
    if plan.choice != "auto":
        return b.render(calls)
    # The text branch may not start with "<", so the first character tells a call from text.
    other = json_rule or b.rule("text", r"[^<] [^\x00]*")
    return b.render(f"({calls}) | {other}")


def _schema_param(plan: Plan, i: int) -> str:
    return f"functions[{i}].parameters" if plan.functions_api else f"tools[{i}].function.parameters"


# -- prompting -----------------------------------------------------------------------------


def render(engine: TextEngine, messages: list[ChatMessage], plan: Plan) -> tuple[str, list[str], bool]:
    """The prompt for a conversation with tools, ending with the plan's prefill if any."""
    text, stops, special = _render(engine, messages, plan)
    return text + plan.prefill, stops, special


def _render(engine: TextEngine, messages: list[ChatMessage], plan: Plan) -> tuple[str, list[str], bool]:
    """The template's own form where it has one, else the generic form."""
    native = [_native(m) for m in messages]
    shown = [t.as_openai() for t in plan.tools] if plan.calls else []
    probe = shown or [_PROBE.as_openai()]
    with_tools: tuple[str, list[str], bool] | None
    plain: tuple[str, list[str], bool] | None
    try:
        with_tools = engine.render_chat(native, tools=probe)  # type: ignore[call-arg]
        plain = engine.render_chat(native)
    except InvalidRequest:  # the template refuses tool roles: it knows nothing of tools
        with_tools = plain = None
    if with_tools is not None and plain is not None and with_tools[0] != plain[0]:
        return with_tools if shown else plain
    return engine.render_chat(generic_messages(messages, plan))


def _native(m: ChatMessage) -> dict[str, Any]:
    d = m.as_template_dict()
    if m.tool_calls:
        # Templates that know tools write the arguments with `| tojson`: they want an object.
        d["tool_calls"] = [
            {
                "id": c["id"],
                "type": "function",
                "function": {
                    "name": c["function"]["name"],
                    "arguments": _arguments(c["function"].get("arguments"), ""),
                },
            }
            for c in m.tool_calls
        ]
    return d


def generic_messages(messages: list[ChatMessage], plan: Plan) -> list[dict[str, Any]]:
    """The conversation for a template without tools: calls and results written as text,
    results as user turns (every template has those), the tools in a system note."""
    out: list[dict[str, Any]] = []
    results_turn: dict[str, Any] | None = None
    for m in messages:
        d = m.as_template_dict()
        if m.role in ("tool", "function"):
            name = plan.call_names.get(m.tool_call_id or "") or m.name or "function"
            result = json.dumps({"name": name, "content": d["content"]}, ensure_ascii=False)
            block = f"{RESULT_OPEN}\n{result}\n{RESULT_CLOSE}"
            if results_turn is not None:  # consecutive results share one turn: roles keep alternating
                results_turn["content"] += "\n" + block
            else:
                results_turn = {"role": "user", "content": block}
                out.append(results_turn)
            continue
        results_turn = None
        if m.role == "assistant" and m.tool_calls:
            calls = [
                f"{CALL_OPEN}\n"
                + json.dumps(
                    {"name": c["function"]["name"], "arguments": _arguments(c["function"].get("arguments"), "")},
                    ensure_ascii=False,
                )
                + f"\n{CALL_CLOSE}"
                for c in m.tool_calls
            ]
            d = {"role": "assistant", "content": "\n".join(([d["content"]] if d["content"] else []) + calls)}
        out.append(d)
    if plan.calls:
        note = tools_note(plan)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{note}".strip()}
        else:
            out.insert(0, {"role": "system", "content": note})
    return out


def tools_note(plan: Plan) -> str:
    lines = [
        "You can call these functions, described as JSON schemas:",
        "<tools>",
        *(json.dumps(t.as_prompt(), ensure_ascii=False) for t in plan.tools),
        "</tools>",
        "To call a function, reply with its name and arguments as JSON inside tool_call tags:",
        f'{CALL_OPEN}\n{{"name": "function_name", "arguments": {{"argument": "value"}}}}\n{CALL_CLOSE}',
    ]
    if plan.choice == "auto":
        lines.append("If no function fits the request, answer in plain text instead.")
    elif plan.choice == "named":
        lines.append(f"Answer with a call to {plan.named}.")
    else:
        lines.append("Answer with a function call.")
    if plan.parallel and plan.choice != "named" and len(plan.tools) > 1:
        lines.append("For several calls, write one tool_call block per call.")
    return "\n".join(lines)


# -- reading the answer --------------------------------------------------------------------

_HEADER = re.compile(r'\s*<tool_call>\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_-]{1,64})"\s*,\s*"arguments"\s*:\s*')
_TRAILER = re.compile(r"\s*\}\s*</tool_call>")


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class CallParser:
    """Splits the constrained output, as it arrives, into plain text or calls.

    The grammar makes the first character decide: "<" starts calls, anything else is text.
    Arguments are passed on as written, so streamed pieces join into exactly the
    non-streamed `arguments`.
    """

    def __init__(self, calls_only: bool):
        self.mode: str | None = "calls" if calls_only else None
        self.calls: list[ToolCall] = []
        self._buf = ""
        self._pos = 0
        self._state = "header"
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def feed(self, text: str) -> CallEvents:
        ev = CallEvents()
        if self.mode is None and text:
            self.mode = "calls" if text.startswith("<") else "text"
        if self.mode == "text":
            ev.text = text
            return ev
        self._buf += text
        self._scan(ev)
        return ev

    @property
    def complete_calls(self) -> list[ToolCall]:
        return [c for c in self.calls if c.complete]

    def _scan(self, ev: CallEvents) -> None:
        while True:
            if self._state == "header":
                m = _HEADER.match(self._buf, self._pos)
                if not m:
                    return
                call = ToolCall(new_call_id(), m.group(1))
                self.calls.append(call)
                ev.calls.append((len(self.calls) - 1, call, ""))
                self._pos, self._state = m.end(), "arguments"
                self._depth, self._in_string, self._escaped = 0, False, False
            elif self._state == "arguments":
                if not self.calls[-1].arguments:
                    # The header may have matched before the blank that follows `"arguments":`
                    # arrived; skip it so streamed and whole arguments are the same text.
                    while self._pos < len(self._buf) and self._buf[self._pos].isspace():
                        self._pos += 1
                start, done = self._pos, False
                while self._pos < len(self._buf) and not done:
                    done = self._step(self._buf[self._pos])
                    self._pos += 1
                piece = self._buf[start : self._pos]
                if piece:
                    self.calls[-1].arguments += piece
                    ev.calls.append((len(self.calls) - 1, None, piece))
                if not done:
                    return
                self._state = "trailer"
            else:
                m = _TRAILER.match(self._buf, self._pos)
                if not m:
                    return
                self.calls[-1].complete = True
                self._pos, self._state = m.end(), "header"
                self._buf, self._pos = self._buf[self._pos :], 0

    def _step(self, ch: str) -> bool:
        """One character of the arguments; True when their JSON object has closed."""
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif ch == "\\":
                self._escaped = True
            elif ch == '"':
                self._in_string = False
        elif ch == '"':
            self._in_string = True
        elif ch in "{[":
            self._depth += 1
        elif ch in "}]":
            self._depth -= 1
            return self._depth == 0
        return False


def new_parser(plan: Plan) -> tuple[CallParser, CallEvents]:
    """A parser for this plan's answer, already fed the prefill; returns its events too."""
    parser = CallParser(calls_only=plan.choice in ("required", "named"))
    return parser, parser.feed(plan.prefill) if plan.prefill else CallEvents()


async def _prefilled(
    first: CallEvents, items: AsyncIterator[TextDelta | Finish]
) -> AsyncIterator[CallEvents | TextDelta | Finish]:
    """The prefill's events (the call's start, sent before the model writes a token), then the items."""
    if first.calls:
        yield first
    async for item in items:
        yield item


def finish_reason(plan: Plan, parser: CallParser, finish: Finish) -> str:
    if parser.complete_calls and finish.reason == "stop":
        return "function_call" if plan.functions_api else "tool_calls"
    return finish.reason


def chat_response(plan: Plan, out: Collected, cid: str, created: int, model: str, logprobs: bool) -> dict[str, Any]:
    """A chat.completion whose message holds the calls (or text, where the model chose text)."""
    assert out.finish is not None
    parser, _ = new_parser(plan)
    parser.feed(out.text)
    if out.finish.reason == "stop":
        parser.feed(plan.suffix)
    calls = parser.complete_calls
    message: dict[str, Any] = {"role": "assistant", "content": out.text}
    if calls:
        message = {"role": "assistant", "content": None, "tool_calls": [c.as_openai() for c in calls]}
        if plan.function_call_field:
            message["function_call"] = {"name": calls[0].name, "arguments": calls[0].arguments}
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": chat_logprobs(out.logprobs) if logprobs else None,
                "finish_reason": finish_reason(plan, parser, out.finish),
            }
        ],
        "usage": finish_usage(out.finish),
    }


async def chat_stream(
    plan: Plan,
    items: AsyncIterator[TextDelta | Finish],
    cid: str,
    created: int,
    model: str,
    include_usage: bool,
    logprobs: bool,
) -> AsyncIterator[dict[str, Any]]:
    """chat.completion.chunk events: text as `content`, calls as OpenAI `delta.tool_calls`."""

    chunk = functools.partial(chat_chunk, cid, created, model)
    parser, ev = new_parser(plan)
    started = False
    async for item in _prefilled(ev, items):
        if isinstance(item, Finish):
            if item.reason == "stop":
                parser.feed(plan.suffix)
            if not started:
                yield chunk({"role": "assistant", "content": ""})
            yield chunk({}, None, finish_reason(plan, parser, item))
            if include_usage:
                yield {**chunk({}), "choices": [], "usage": finish_usage(item)}
            return
        ev = item if isinstance(item, CallEvents) else parser.feed(item.text)
        if ev.text:
            delta: dict[str, Any] = {"content": ev.text}
            if not started:
                delta = {"role": "assistant", **delta}
                started = True
            yield chunk(delta, chat_logprobs(item.logprobs) if logprobs and isinstance(item, TextDelta) else None)
        for index, call, piece in ev.calls:
            if call is not None:
                tool_delta: dict[str, Any] = {
                    "index": index,
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }
                legacy = {"name": call.name, "arguments": ""}
            else:
                tool_delta = {"index": index, "function": {"arguments": piece}}
                legacy = {"arguments": piece}
            delta = {"tool_calls": [tool_delta]}
            if plan.function_call_field and index == 0:
                delta["function_call"] = legacy
            if not started:
                delta = {"role": "assistant", "content": None, **delta}
                started = True
            yield chunk(delta)
