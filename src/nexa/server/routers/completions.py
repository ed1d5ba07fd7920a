"""POST /v1/completions: OpenAI's text_completion plus the original's `result`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from nexa.engines.base import Finish, Task, TextDelta, TextEngine
from nexa.schemas.common import new_id, now
from nexa.schemas.text import CompletionRequest
from nexa.server.generation import completion_logprobs, finish_usage, generate, generate_all, off_loop
from nexa.server.sse import sse_response
from nexa.structured.grammars import response_format_grammar

router = APIRouter(tags=["text"])


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Any:
    engine: TextEngine = request.app.state.manager.get(Task.COMPLETION, "/v1/completions")  # type: ignore[assignment]
    params = body.sampling(body.logprobs)
    params.grammar = response_format_grammar(body.response_format, body.stop)  # JSON that always parses
    prompt = body.prompt_text()
    tokens = prompt if isinstance(prompt, list) else await off_loop(engine.tokenize, prompt)
    engine.check_prompt(tokens, "prompt")
    echo = prompt if body.echo and isinstance(prompt, str) else ""
    cid, created, model = new_id("cmpl"), now(), engine.name

    if body.stream:
        items = generate(request, engine, tokens, params)  # queued now: a full queue is a 503, not a broken stream
        return sse_response(_stream(items, params, body, cid, created, model, echo))

    out = await generate_all(request, engine, tokens, params)
    assert out.finish is not None
    text = echo + out.text
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "text": text,
                "index": 0,
                "logprobs": completion_logprobs(out.logprobs) if params.logprobs is not None else None,
                "finish_reason": out.finish.reason,
            }
        ],
        "usage": finish_usage(out.finish),
        "result": text,  # what the original's clients read
    }


async def _stream(
    items: AsyncIterator[TextDelta | Finish],
    params: Any,
    body: CompletionRequest,
    cid: str,
    created: int,
    model: str,
    echo: str,
) -> AsyncIterator[dict[str, Any]]:
    def chunk(text: str, logprobs: Any = None, finish: str | None = None) -> dict[str, Any]:
        return {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}],
        }

    if echo:
        yield chunk(echo)
    offset = len(echo)
    async for item in items:
        if isinstance(item, Finish):
            yield chunk("", None, item.reason)
            if body.include_usage:
                yield {**chunk(""), "choices": [], "usage": finish_usage(item)}
        else:
            lp = completion_logprobs(item.logprobs, offset) if params.logprobs is not None else None
            offset += len(item.text)
            yield chunk(item.text, lp)
