"""POST /v1/chat/completions: the whole conversation through the model's chat template."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from nexa.engines.base import Finish, SamplingParams, Task, TextEngine
from nexa.errors import InvalidRequest
from nexa.schemas.common import new_id, now
from nexa.schemas.text import ChatRequest
from nexa.server.generation import chat_logprobs, finish_usage, generate, generate_all, off_loop
from nexa.server.sse import sse_response

router = APIRouter(tags=["text"])


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request) -> Any:
    manager = request.app.state.manager
    task = Task.VISION if any(m.has_images() for m in body.messages) else Task.CHAT
    engine: TextEngine = manager.get(task, "image input" if task == Task.VISION else "/v1/chat/completions")
    if body.tools and body.tool_choice != "none":
        engine.require(Task.TOOLS, "tools")
    if body.response_format and body.response_format.type != "text":
        raise InvalidRequest(
            f"response_format {body.response_format.type!r} is not supported by this server yet.",
            param="response_format",
        )
    params = body.sampling(body.logprob_count())
    tokens, template_stops = await off_loop(_prompt, engine, body)
    params.stop = params.stop + [s for s in template_stops if s not in params.stop]
    cid, created, model = new_id("chatcmpl"), now(), engine.name

    if body.stream:
        return sse_response(_stream(request, engine, tokens, params, body, cid, created, model))

    out = await generate_all(request, engine, tokens, params)
    assert out.finish is not None
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": out.text},
                "logprobs": chat_logprobs(out.logprobs) if params.logprobs is not None else None,
                "finish_reason": out.finish.reason,
            }
        ],
        "usage": finish_usage(out.finish),
    }


def _prompt(engine: TextEngine, body: ChatRequest) -> tuple[list[int], list[str]]:
    text, stops, special = engine.render_chat([m.as_template_dict() for m in body.messages])
    tokens = engine.tokenize(text, special=True) if special else engine.tokenize(text)
    engine.check_prompt(tokens, "messages")  # type: ignore[attr-defined]
    return tokens, stops


async def _stream(
    request: Request,
    engine: TextEngine,
    tokens: list[int],
    params: SamplingParams,
    body: ChatRequest,
    cid: str,
    created: int,
    model: str,
) -> AsyncIterator[dict[str, Any]]:
    def chunk(delta: dict[str, Any], logprobs: Any = None, finish: str | None = None) -> dict[str, Any]:
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        }

    yield chunk({"role": "assistant", "content": ""})
    async for item in generate(request, engine, tokens, params):
        if isinstance(item, Finish):
            yield chunk({}, None, item.reason)
            if body.include_usage:
                yield {**chunk({}), "choices": [], "usage": finish_usage(item)}
        else:
            lp = chat_logprobs(item.logprobs) if params.logprobs is not None else None
            yield chunk({"content": item.text}, lp)
