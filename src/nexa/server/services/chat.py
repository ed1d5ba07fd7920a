"""Chat answers: /v1/chat/completions (plain, with images, with tools or a JSON
response_format) and /v1/function-calling, the original Nexa server's "call the most
appropriate function", which is chat with tools whose answer is always a call.

Each returns a chat.completion, or with `stream: true` its chunks for the router to send as
server-sent events. The generation is queued before either is returned, so a full queue is a
503 rather than a broken stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, overload

from fastapi import Request

from nexa.engines.base import Finish, SamplingParams, Task, TextDelta, TextEngine
from nexa.errors import InvalidRequest
from nexa.schemas.text import AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatRequest, Delta
from nexa.schemas.tools import FunctionCallingRequest
from nexa.server.image_input import ImagePolicy, load_images
from nexa.server.leases import engine_for
from nexa.server.services import tools
from nexa.server.services.calls import staged
from nexa.server.services.compiling import compile_in_thread
from nexa.server.services.generation import ChatReply, chat_logprobs, collect_items, generate
from nexa.server.threads import in_thread
from nexa.structured import prompting
from nexa.structured.plan import Plan, plan_chat

Answer = ChatCompletion | AsyncIterator[ChatCompletionChunk]
# With `frames`, a plain streamed token comes as its SSE frame already (ChatReply.token_frame).
Framed = ChatCompletion | AsyncIterator[ChatCompletionChunk | bytes]
Prompt = tuple[Any, list[str]]  # (the engine's prompt: token ids, or text and images; the template's stops)


@overload
async def chat(request: Request, body: ChatRequest) -> Answer: ...
@overload
async def chat(request: Request, body: ChatRequest, *, frames: Literal[True]) -> Framed: ...
async def chat(request: Request, body: ChatRequest, *, frames: bool = False) -> Framed:
    """`frames`: for a router that sends the stream as server-sent events (see Framed); the
    Responses and Messages APIs read every chunk."""
    task = Task.VISION if any(m.has_images() for m in body.messages) else Task.CHAT
    endpoint = "image input" if task == Task.VISION else "/v1/chat/completions"
    engine: TextEngine = await engine_for(request, task, endpoint, body.model, body.keep_alive)
    _check_size(request, engine, body)
    params = body.sampling(body.logprob_count())
    if _builds_grammar(body):
        plan = await compile_in_thread(plan_chat, body, param=_grammar_param(body))
    else:  # a plain chat's plan is a few checks (None, mostly): no thread for it
        plan = plan_chat(body)
    if plan is not None and plan.calls:
        engine.require(Task.TOOLS, "tools")
    if task == Task.VISION:
        prompt = await _vision_prompt(request, engine, body, plan)
    else:
        prompt = await in_thread(_prompt, engine, body, plan)
    return await _answer(request, engine, body, params, plan, prompt, frames)


async def function_calling(request: Request, body: FunctionCallingRequest) -> Framed:
    engine: TextEngine = await engine_for(request, Task.TOOLS, "/v1/function-calling", body.model, body.keep_alive)
    _check_size(request, engine, body)
    params = body.sampling(body.logprob_count())
    plan = await compile_in_thread(plan_chat, body, always_call=True, param=_grammar_param(body))
    assert plan is not None  # always_call refuses a request without tools
    return await _answer(request, engine, body, params, plan, await in_thread(_prompt, engine, body, plan))


async def prompt_tokens(request: Request, body: ChatRequest, endpoint: str) -> int:
    """How many tokens chat() would feed the model for `body`: its template and tools rendered,
    then tokenized, without generating."""
    if any(m.has_images() for m in body.messages):
        raise InvalidRequest(f"{endpoint} does not count images; send the text alone.", param="messages")
    engine: TextEngine = await engine_for(request, Task.CHAT, endpoint, body.model, body.keep_alive)
    _check_size(request, engine, body)
    plan = await compile_in_thread(plan_chat, body, param=_grammar_param(body))
    tokens, _ = await in_thread(_prompt, engine, body, plan)
    return len(tokens)


def _check_size(request: Request, engine: TextEngine, body: ChatRequest) -> None:
    """Bounds checked before any template is rendered or text tokenized."""
    most = request.app.state.settings.max_messages
    if len(body.messages) > most:
        raise InvalidRequest(
            f"{len(body.messages)} messages in one request; this server takes at most {most} (--max-messages).",
            param="messages", code="too_many_messages",
        )
    engine.check_prompt_chars(sum(len(m.as_template_dict()["content"]) for m in body.messages), "messages")


def _builds_grammar(body: ChatRequest) -> bool:
    """Whether plan_chat compiles a grammar, which may take long enough to want a thread."""
    return bool(body.tools) or body.functions is not None or body.response_format is not None


def _grammar_param(body: ChatRequest) -> str:
    return "functions" if body.functions is not None else "tools" if body.tools else "response_format"


async def _answer(
    request: Request, engine: TextEngine, body: ChatRequest, params: SamplingParams, plan: Plan | None, prompt: Prompt,
    frames: bool = False,
) -> Framed:
    tokens, template_stops = prompt
    if plan is not None:
        params.grammar = plan.grammar
    params.stop = params.stop + [s for s in template_stops if s not in params.stop]
    reply = ChatReply.new(engine.name)
    logprobs = params.logprobs is not None
    calls = plan if plan is not None and plan.calls else None
    if calls is not None:
        items = await staged(request, engine, tokens, params, calls)
    else:
        items = await generate(request, engine, tokens, params, whole=not body.stream)
    if body.stream:
        if calls is not None:
            return tools.stream(calls, items, reply, body.include_usage, logprobs)
        return _stream(items, reply, body.include_usage, logprobs, frames)
    out = await collect_items(request, items)
    if calls is not None:
        return tools.response(calls, out, reply, logprobs)
    assert out.finish is not None
    return reply.completion(AssistantMessage(content=out.text), out, out.finish.reason, logprobs)


async def _vision_prompt(request: Request, engine: TextEngine, body: ChatRequest, plan: Plan | None) -> Prompt:
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
    images = await load_images(urls, ImagePolicy.from_settings(settings), request.app.state.preprocess)
    messages = [m.as_parts_dict() for m in body.messages]
    return await in_thread(engine.vision_prompt, messages, images)  # type: ignore[attr-defined]


def _prompt(engine: TextEngine, body: ChatRequest, plan: Plan | None) -> tuple[list[int], list[str]]:
    if plan is not None and plan.custom_prompt:  # tools shown, or calls and results in the history
        text, stops, special = prompting.render(engine, body.messages, plan)
    else:
        text, stops, special = engine.render_chat([m.as_template_dict() for m in body.messages])
    tokens = engine.tokenize_chat(text, special)
    engine.check_prompt(tokens, "messages")
    return tokens, stops


async def _stream(
    items: AsyncIterator[TextDelta | Finish], reply: ChatReply, include_usage: bool, logprobs: bool, frames: bool
) -> AsyncIterator[ChatCompletionChunk | bytes]:
    yield reply.chunk(Delta(role="assistant", content=""))
    async for item in items:
        if isinstance(item, Finish):
            yield reply.chunk(Delta(), None, item.reason)
            if include_usage:
                yield reply.usage_chunk(item)
        elif logprobs:
            yield reply.chunk(Delta(content=item.text), chat_logprobs(item.logprobs))
        else:
            yield reply.token_frame.fill(item.text) if frames else reply.chunk(Delta(content=item.text))
