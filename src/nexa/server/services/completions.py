"""Plain completions: OpenAI's text_completion plus the original Nexa server's `result`,
whole or, with `stream: true`, as chunks for the router to send as server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request

from nexa.engines.base import Finish, SamplingParams, Task, TextDelta, TextEngine
from nexa.schemas.common import new_id, now
from nexa.schemas.text import Completion, CompletionChoice, CompletionChunk, CompletionLogprobs, CompletionRequest
from nexa.server.leases import engine_for
from nexa.server.services.compiling import compile_in_thread
from nexa.server.services.generation import completion_logprobs, finish_usage, generate, generate_all
from nexa.server.sse import FrameTemplate
from nexa.server.threads import in_thread
from nexa.structured.grammars import response_format_grammar


async def complete(request: Request, body: CompletionRequest) -> Completion | AsyncIterator[CompletionChunk | bytes]:
    engine: TextEngine = await engine_for(request, Task.COMPLETION, "/v1/completions", body.model, body.keep_alive)
    params = body.sampling(body.logprobs)
    params.grammar = await compile_in_thread(  # JSON that always parses
        response_format_grammar, body.response_format, body.stop, param="response_format"
    )
    prompt = body.prompt_text()
    if isinstance(prompt, str):
        engine.check_prompt_chars(len(prompt), "prompt")
    tokens = prompt if isinstance(prompt, list) else await in_thread(engine.tokenize, prompt)
    engine.check_prompt(tokens, "prompt")
    echo = prompt if body.echo and isinstance(prompt, str) else ""
    cid, created, model = new_id("cmpl"), now(), engine.name

    if body.stream:
        items = await generate(request, engine, tokens, params)  # queued now: a full queue is a 503
        return _stream(items, params, body, cid, created, model, echo)

    out = await generate_all(request, engine, tokens, params)
    assert out.finish is not None
    text = echo + out.text
    logprobs = completion_logprobs(out.logprobs) if params.logprobs is not None else None
    choice = CompletionChoice(text=text, index=0, logprobs=logprobs, finish_reason=out.finish.reason)
    # `result`: what the original's clients read.
    return Completion(
        id=cid, created=created, model=model, choices=[choice], usage=finish_usage(out.finish), result=text
    )


async def _stream(
    items: AsyncIterator[TextDelta | Finish],
    params: SamplingParams,
    body: CompletionRequest,
    cid: str,
    created: int,
    model: str,
    echo: str,
) -> AsyncIterator[CompletionChunk | bytes]:
    def chunk(text: str, logprobs: CompletionLogprobs | None = None, finish: str | None = None) -> CompletionChunk:
        choice = CompletionChoice(text=text, index=0, logprobs=logprobs, finish_reason=finish)
        return CompletionChunk(id=cid, created=created, model=model, choices=[choice])

    token_frame = FrameTemplate(chunk(FrameTemplate.MARK))  # the SSE frame of chunk(text), sent per token

    if echo:
        yield chunk(echo)
    offset = len(echo)
    async for item in items:
        if isinstance(item, Finish):
            yield chunk("", None, item.reason)
            if body.include_usage:
                yield CompletionChunk(id=cid, created=created, model=model, choices=[], usage=finish_usage(item))
        else:
            if params.logprobs is None:
                yield token_frame.fill(item.text)
                continue
            lp = completion_logprobs(item.logprobs, offset)
            offset += len(item.text)
            yield chunk(item.text, lp)
