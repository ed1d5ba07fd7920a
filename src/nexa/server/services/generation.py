"""Shared by the completion and chat services: run a text engine off the loop and turn its
plain results into OpenAI pieces (logprobs, usage, the access-log figures, and the one place
a chat answer's envelope is built, whole or as chunks)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import cached_property

from fastapi import Request

from nexa.engines.base import Finish, SamplingParams, TextDelta, TextEngine, TokenLogprob
from nexa.schemas.common import PromptTokensDetails, Timings, Usage, new_id, now
from nexa.schemas.text import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatLogprobs,
    ChunkChoice,
    CompletionLogprobs,
    Delta,
    TopLogprob,
)
from nexa.schemas.text import TokenLogprob as TokenLogprobOut
from nexa.server.sse import FrameTemplate
from nexa.server.threads import collect, in_thread, iterate


async def generate(
    request: Request, engine: TextEngine, prompt: list[int], params: SamplingParams, *, whole: bool = False
) -> AsyncIterator[TextDelta | Finish]:
    """`whole`: the caller reads the whole answer before it answers (no `stream`); a model
    worker then sends the text once, at the end, rather than a message per token."""
    # Queued before the iterator is returned, so a request the engine cannot queue (503) fails
    # before any response starts; engines do their work only when the returned iterator is read.
    # In a thread: for a model in a worker process, queueing is a round trip to it.
    cancel = threading.Event()
    gathered = getattr(engine, "gathered", None) if whole else None  # a RemoteEngine's
    if gathered is not None:
        started = await in_thread(gathered, "generate", prompt, params, cancel)
    else:
        started = await in_thread(engine.generate, prompt, params, cancel)

    async def items() -> AsyncIterator[TextDelta | Finish]:
        source = iterate(started, cancel)
        try:
            async for item in source:
                if isinstance(item, Finish):
                    request.state.generation = (item.completion_tokens, item.generation_seconds)
                yield item
        finally:
            cancel.set()
            await source.aclose()

    return items()


@dataclass
class Collected:
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish: Finish | None = None


async def generate_all(request: Request, engine: TextEngine, prompt: list[int], params: SamplingParams) -> Collected:
    return await collect_items(request, await generate(request, engine, prompt, params, whole=True))


async def collect_items(request: Request, items: AsyncIterator[TextDelta | Finish]) -> Collected:
    """A generation's items gathered into one text (stopped if the client goes away)."""
    out = Collected()
    parts: list[str] = []
    for item in await collect(request, items):
        if isinstance(item, TextDelta):
            parts.append(item.text)
            out.logprobs.extend(item.logprobs)
        else:
            out.finish = item
    out.text = "".join(parts)
    return out


def finish_usage(finish: Finish) -> Usage:
    computed = finish.prompt_tokens - finish.cached_tokens
    return Usage(
        prompt_tokens=finish.prompt_tokens,
        completion_tokens=finish.completion_tokens,
        total_tokens=finish.prompt_tokens + finish.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=finish.cached_tokens),
        timings=Timings(
            prompt_n=computed,
            prompt_ms=round(finish.prompt_seconds * 1000, 3),
            prompt_per_second=round(computed / finish.prompt_seconds, 2) if finish.prompt_seconds > 0 else None,
            predicted_n=finish.completion_tokens,
            predicted_ms=round(finish.generation_seconds * 1000, 3),
            predicted_per_second=(
                round(finish.completion_tokens / finish.generation_seconds, 2)
                if finish.generation_seconds > 0
                else None
            ),
            cache_n=finish.cached_tokens,
        ),
    )


@dataclass(frozen=True)
class ChatReply:
    """What every piece of one chat answer shares (id, time, model): the chat.completion and
    its chunks are built here, for plain chat, chat with tools and /v1/function-calling alike."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, model: str) -> ChatReply:
        return cls(new_id("chatcmpl"), now(), model)

    def completion(
        self, message: AssistantMessage, out: Collected, finish_reason: str, logprobs: bool
    ) -> ChatCompletion:
        assert out.finish is not None
        choice = ChatChoice(
            index=0,
            message=message,
            logprobs=chat_logprobs(out.logprobs) if logprobs else None,
            finish_reason=finish_reason,
        )
        completion = ChatCompletion(
            id=self.id, created=self.created, model=self.model, choices=[choice], usage=finish_usage(out.finish)
        )
        completion._stop_sequence = out.finish.stop_sequence
        return completion

    def chunk(
        self, delta: Delta, logprobs: ChatLogprobs | None = None, finish: str | None = None
    ) -> ChatCompletionChunk:
        choice = ChunkChoice(index=0, delta=delta, logprobs=logprobs, finish_reason=finish)
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[choice])

    @cached_property
    def token_frame(self) -> FrameTemplate:
        """`token_frame.fill(text)`: the SSE frame of `chunk(Delta(content=text))`, the one chunk
        sent per token, with neither the chunk nor its JSON built per token (building the chunk
        alone cost about a tenth of the server's CPU per streamed token)."""
        return FrameTemplate(self.chunk(Delta(content=FrameTemplate.MARK)))

    def usage_chunk(self, finish: Finish) -> ChatCompletionChunk:
        """The last event when the client asked for `stream_options.include_usage`."""
        chunk = ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[], usage=finish_usage(finish)
        )
        chunk._stop_sequence = finish.stop_sequence
        return chunk


def chat_logprobs(items: list[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            TokenLogprobOut(
                token=t.token,
                logprob=t.logprob,
                bytes=t.bytes,
                top_logprobs=[TopLogprob(token=a.token, logprob=a.logprob, bytes=a.bytes) for a in t.top],
            )
            for t in items
        ],
        refusal=None,
    )


def completion_logprobs(items: list[TokenLogprob], offset: int = 0) -> CompletionLogprobs:
    """OpenAI's legacy completions layout: parallel lists plus text offsets."""
    offsets = []
    for t in items:
        offsets.append(offset)
        offset += len(t.token)
    return CompletionLogprobs(
        tokens=[t.token for t in items],
        token_logprobs=[t.logprob for t in items],
        top_logprobs=[{a.token: a.logprob for a in t.top} for t in items],
        text_offset=offsets,
    )
