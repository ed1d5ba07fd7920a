"""POST /v1/function-calling: the seed's endpoint, "call the most appropriate function".

The same machinery as chat with tools (nexa.structured), with the seed's answer shape: a
chat.completion whose message has `content: null`, `tool_calls`, and the legacy
`function_call` (which the original sent with an empty name; ours carries the real one).
Its purpose is a call, so tool_choice "auto" lets the model pick which function, never
whether to call one.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from nexa.engines.base import Task, TextEngine
from nexa.schemas.common import new_id, now
from nexa.schemas.text import ChatCompletion, ChatCompletionChunk
from nexa.schemas.tools import FunctionCallingRequest
from nexa.server import tools
from nexa.server.generation import generate, generate_all
from nexa.server.openapi import ERRORS, streamed
from nexa.server.sse import sse_response
from nexa.server.threads import in_thread
from nexa.structured import prompting
from nexa.structured.plan import Plan, plan_chat

router = APIRouter(tags=["tools"], responses=ERRORS)


@router.post("/v1/function-calling", response_model=ChatCompletion, responses=streamed(ChatCompletionChunk))
async def function_calling(body: FunctionCallingRequest, request: Request) -> Any:
    engine: TextEngine = request.app.state.manager.get(Task.TOOLS, "/v1/function-calling")
    params = body.sampling(body.logprob_count())
    plan = plan_chat(body, always_call=True)
    assert plan is not None  # always_call refuses a request without tools
    params.grammar = plan.grammar
    tokens, template_stops = await in_thread(_prompt, engine, body, plan)
    params.stop = params.stop + [s for s in template_stops if s not in params.stop]
    cid, created, model = new_id("chatcmpl"), now(), engine.name
    want_logprobs = params.logprobs is not None
    if body.stream:
        items = generate(request, engine, tokens, params)
        return sse_response(tools.chat_stream(plan, items, cid, created, model, body.include_usage, want_logprobs))
    out = await generate_all(request, engine, tokens, params)
    return tools.chat_response(plan, out, cid, created, model, want_logprobs)


def _prompt(engine: TextEngine, body: FunctionCallingRequest, plan: Plan) -> tuple[list[int], list[str]]:
    text, stops, special = prompting.render(engine, body.messages, plan)
    tokens = engine.tokenize_chat(text, special)
    engine.check_prompt(tokens, "messages")
    return tokens, stops
