"""The prompt of a conversation with tools, or with calls and results in its history.

Where the model's chat template knows tools (rendering with `tools=` changes the prompt), the
template presents them in the form the model was trained on; otherwise a plain system note
lists them and the conversation's calls and results are written out as text.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from nexa.errors import InvalidRequest
from nexa.schemas.text import ChatMessage
from nexa.structured.grammars import CALL_CLOSE, CALL_OPEN, MESSAGE
from nexa.structured.plan import NO_PARAMETERS, Plan, Tool, call_arguments

RESULT_OPEN, RESULT_CLOSE = "<tool_response>", "</tool_response>"
# A tool that only serves to ask a chat template whether it renders tools at all.
_PROBE = Tool("probe", "", NO_PARAMETERS)


class ChatTemplate(Protocol):
    """What prompting needs of a text engine. A template that knows tools also takes `tools=`
    (OpenAI tool dicts), which the text engines' common interface does not promise."""

    def render_chat(self, messages: list[dict[str, Any]]) -> tuple[str, list[str], bool]: ...


def render(engine: ChatTemplate, messages: list[ChatMessage], plan: Plan) -> tuple[str, list[str], bool]:
    """The prompt for a conversation with tools: the template's own form where it has one, else
    the generic form."""
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
        plan.native = True
        return with_tools if shown else plain
    return engine.render_chat(generic_messages(messages, plan))


def _native(m: ChatMessage) -> dict[str, Any]:
    d = m.as_template_dict()
    if m.role == "assistant" and m.tool_calls:  # only these are checked (plan.check_messages)
        # Templates that know tools write the arguments with `| tojson`: they want an object.
        d["tool_calls"] = [
            {
                "id": c["id"],
                "type": "function",
                "function": {
                    "name": c["function"]["name"],
                    "arguments": call_arguments(c["function"].get("arguments"), ""),
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
                    {"name": c["function"]["name"], "arguments": call_arguments(c["function"].get("arguments"), "")},
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
        lines.append(f"If no function fits the request, reply with {MESSAGE} and then your answer in plain text.")
    elif plan.choice == "named":
        lines.append(f"Answer with a call to {plan.named}.")
    else:
        lines.append("Answer with a function call.")
    if plan.parallel and plan.choice != "named":
        lines.append("Make one call, or several if the request needs several: one tool_call block per call.")
    return "\n".join(lines)
