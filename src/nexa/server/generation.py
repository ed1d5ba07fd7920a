"""Shared by the completion and chat routers: run a text engine off the loop and
turn its plain results into OpenAI pieces (logprobs, usage, the access-log figures)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from nexa.engines.base import Finish, SamplingParams, TextDelta, TextEngine, TokenLogprob
from nexa.schemas.common import usage
from nexa.server.threads import collect, iterate_in_thread


def generate(
    request: Request, engine: TextEngine, prompt: list[int], params: SamplingParams
) -> AsyncIterator[TextDelta | Finish]:
    async def items() -> AsyncIterator[TextDelta | Finish]:
        async for item in iterate_in_thread(lambda cancel: engine.generate(prompt, params, cancel)):
            if isinstance(item, Finish):
                request.state.generation = (item.completion_tokens, item.generation_seconds)
            yield item

    return items()


@dataclass
class Collected:
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish: Finish | None = None


async def generate_all(request: Request, engine: TextEngine, prompt: list[int], params: SamplingParams) -> Collected:
    out = Collected()
    parts: list[str] = []
    for item in await collect(request, generate(request, engine, prompt, params)):
        if isinstance(item, TextDelta):
            parts.append(item.text)
            out.logprobs.extend(item.logprobs)
        else:
            out.finish = item
    out.text = "".join(parts)
    return out


async def off_loop(fn: Any, *args: Any) -> Any:
    """Tokenising and template rendering are quick but still CPU work: keep them off the loop."""
    return await asyncio.to_thread(fn, *args)


def finish_usage(finish: Finish) -> dict[str, Any]:
    return usage(finish.prompt_tokens, finish.completion_tokens, finish.cached_tokens)


def chat_logprobs(items: list[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob,
                "bytes": t.bytes,
                "top_logprobs": [{"token": a.token, "logprob": a.logprob, "bytes": a.bytes} for a in t.top],
            }
            for t in items
        ],
        "refusal": None,
    }


def completion_logprobs(items: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """OpenAI's legacy completions layout: parallel lists plus text offsets."""
    offsets = []
    for t in items:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in items],
        "token_logprobs": [t.logprob for t in items],
        "top_logprobs": [{a.token: a.logprob for a in t.top} for t in items],
        "text_offset": offsets,
    }
