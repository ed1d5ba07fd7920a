"""POST /v1/chat/completions: the whole conversation through the model's chat template."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from nexa.engines.base import Finish, SamplingParams, Task, TextDelta, TextEngine
from nexa.errors import InvalidRequest
from nexa.schemas.common import new_id, now
from nexa.schemas.text import AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatRequest
from nexa.server import tools
from nexa.server.generation import chat_chunk, chat_logprobs, finish_usage, generate, generate_all
from nexa.server.image_input import ImagePolicy, load_images
from nexa.server.openapi import ERRORS, streamed
from nexa.server.sse import sse_response
from nexa.server.threads import in_thread
from nexa.structured import prompting
from nexa.structured.plan import Plan, plan_chat

router = APIRouter(tags=["text"], responses=ERRORS)


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=streamed(ChatCompletionChunk))
async def chat_completions(body: ChatRequest, request: Request) -> Any:
    manager = request.app.state.manager
    task = Task.VISION if any(m.has_images() for m in body.messages) else Task.CHAT
    engine: TextEngine = manager.get(task, "image input" if task == Task.VISION else "/v1/chat/completions")
    params = body.sampling(body.logprob_count())
    plan = plan_chat(body)  # tools / response_format: None for a plain chat
    if plan is not None:
        if plan.calls:
            engine.require(Task.TOOLS, "tools")
        params.grammar = plan.grammar
    if task == Task.VISION:
        tokens, template_stops = await _vision_prompt(request, engine, body, plan)
    else:
        tokens, template_stops = await in_thread(_prompt, engine, body, plan)
    params.stop = params.stop + [s for s in template_stops if s not in params.stop]
    cid, created, model = new_id("chatcmpl"), now(), engine.name

    if plan is not None and plan.calls:
        want_logprobs = params.logprobs is not None
        if body.stream:
            items = generate(request, engine, tokens, params)
            return sse_response(tools.chat_stream(plan, items, cid, created, model, body.include_usage, want_logprobs))
        out = await generate_all(request, engine, tokens, params)
        return tools.chat_response(plan, out, cid, created, model, want_logprobs)

    if body.stream:
        items = generate(request, engine, tokens, params)  # queued now: a full queue is a 503, not a broken stream
        return sse_response(_stream(items, params, body, cid, created, model))

    out = await generate_all(request, engine, tokens, params)
    assert out.finish is not None
    message = AssistantMessage(content=out.text)
    logprobs = chat_logprobs(out.logprobs) if params.logprobs is not None else None
    choice = ChatChoice(index=0, message=message, logprobs=logprobs, finish_reason=out.finish.reason)
    return ChatCompletion(id=cid, created=created, model=model, choices=[choice], usage=finish_usage(out.finish))


async def _vision_prompt(
    request: Request, engine: TextEngine, body: ChatRequest, plan: Plan | None
) -> tuple[Any, list[str]]:
    """Fetch and decode the images (off the loop), then let the engine build its prompt of text and images."""
    if plan is not None and plan.custom_prompt:
        # The tools prompt is rendered as plain text; images need the engine's own rendering.
        raise InvalidRequest(
            "Tools (or tool calls in the history) together with images are not supported yet: "
            "send the images without tools, or the tools without images.",
            param="tools",
        )
    settings = request.app.state.settings
    urls = [
        (url, f"messages[{i}].content[{j}].image_url")
        for i, m in enumerate(body.messages)
        for j, url in m.image_urls()
    ]
    if len(urls) > settings.max_chat_images:
        raise InvalidRequest(
            f"{len(urls)} images in one request; this server takes at most {settings.max_chat_images} "
            "(--max-chat-images).",
            param="messages",
        )
    images = await load_images(urls, ImagePolicy.from_settings(settings))
    messages = [m.as_parts_dict() for m in body.messages]
    return await in_thread(engine.vision_prompt, messages, images)  # type: ignore[attr-defined]


def _prompt(engine: TextEngine, body: ChatRequest, plan: Plan | None = None) -> tuple[list[int], list[str]]:
    if plan is not None and plan.custom_prompt:  # tools shown, or calls and results in the history
        text, stops, special = prompting.render(engine, body.messages, plan)
    else:
        text, stops, special = engine.render_chat([m.as_template_dict() for m in body.messages])
    tokens = engine.tokenize_chat(text, special)
    engine.check_prompt(tokens, "messages")
    return tokens, stops


async def _stream(
    items: AsyncIterator[TextDelta | Finish],
    params: SamplingParams,
    body: ChatRequest,
    cid: str,
    created: int,
    model: str,
) -> AsyncIterator[dict[str, Any] | ChatCompletionChunk]:
    chunk = functools.partial(chat_chunk, cid, created, model)
    yield chunk({"role": "assistant", "content": ""})
    async for item in items:
        if isinstance(item, Finish):
            yield chunk({}, None, item.reason)
            if body.include_usage:
                yield ChatCompletionChunk(id=cid, created=created, model=model, choices=[], usage=finish_usage(item))
        else:
            lp = chat_logprobs(item.logprobs) if params.logprobs is not None else None
            yield chunk({"content": item.text}, lp)
