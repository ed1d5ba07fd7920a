"""A chat request with tools or a JSON response format, checked into a `Plan`.

The plan holds the checked tools, what tool_choice allows, what the conversation's history
holds, and the grammar (nexa.structured.grammars) the answer is held to. Every malformed
tool, choice or tool message is a 400 naming its field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from nexa.errors import InvalidRequest
from nexa.schemas.text import ChatMessage, ChatRequest
from nexa.structured.grammars import CallGrammar, plan_grammar

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class Tool:
    """One callable function, checked."""

    name: str
    description: str
    parameters: dict[str, Any]

    def as_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def as_prompt(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["parameters"] = self.parameters
        return out


@dataclass
class Plan:
    tools: list[Tool] = field(default_factory=list)
    choice: str = "none"  # "auto" | "none" | "required" | "named"
    named: str | None = None
    parallel: bool = True
    functions_api: bool = False  # OpenAI's deprecated `functions`: finish_reason "function_call"
    function_call_field: bool = False  # also answer with the legacy `function_call` (the original Nexa server's shape)
    history: bool = False  # the conversation holds calls or their results
    call_names: dict[str, str] = field(default_factory=dict)  # tool_call_id -> function name
    # The calls the conversation already made, as (name, arguments as canonical JSON): "auto"
    # answers in text rather than make one again (SmolLM2 repeats its call after the result).
    made: set[tuple[str, str]] = field(default_factory=set)
    grammar: str | None = None  # a one-pass answer's grammar: a response format without calls
    call: CallGrammar | None = None  # a call's grammar, where the answer may hold calls (see calls.py)
    text_answer: str | None = None  # under "auto": the grammar of an answer in text
    native: bool = False  # the chat template shows the tools in its own form (set by prompting.render)

    @property
    def calls(self) -> bool:
        """Whether the model may answer with calls."""
        return bool(self.tools) and self.choice != "none"

    @property
    def custom_prompt(self) -> bool:
        return self.calls or self.history


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
    plan.call_names, plan.history, plan.made = check_messages(body.messages)
    grammar = plan_grammar(plan, body.response_format)
    if grammar is not None:
        plan.grammar, plan.call, plan.text_answer = grammar.text, grammar.call, grammar.text_answer
        if body.stop:
            raise InvalidRequest(
                "stop cannot be combined with tools or a JSON response_format: a stop string could cut the JSON short.",
                param="stop",
            )
    if not plan.tools and not plan.history and grammar is None:
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


def check_messages(messages: list[ChatMessage]) -> tuple[dict[str, str], bool, set[tuple[str, str]]]:
    """Each tool result must answer a call made earlier; returns (call id -> name, any history,
    the calls made as (name, arguments as canonical JSON))."""
    names: dict[str, str] = {}
    made: set[tuple[str, str]] = set()
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
                arguments = call_arguments(fn.get("arguments"), f"{where}.function.arguments")
                names[call["id"]] = fn["name"]
                made.add((fn["name"], json.dumps(arguments, sort_keys=True)))
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
    return names, history, made


def call_arguments(raw: Any, param: str) -> dict[str, Any]:
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
