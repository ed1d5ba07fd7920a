"""A streamed token's SSE frame is filled into a template rather than serialised: the bytes must
be those of the whole chunk serialised, whatever the token's text. And the response that sends
the frames: [DONE] at the end, a failure as an error event, the chunks closed when the client goes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.requests import ClientDisconnect

from nexa.errors import InvalidRequest
from nexa.schemas.text import Delta
from nexa.server.services.generation import ChatReply
from nexa.server.sse import DONE, EventStream, _frame

TEXTS = ["Hello", " world", "", 'say "hi"', "back\\slash", "line\nbreak", "tab\t", "héllo 世界 🙂", "\x00", "\u2028"]


@pytest.mark.parametrize("text", TEXTS)
def test_a_token_frame_is_the_chunk_serialised(text: str) -> None:
    reply = ChatReply.new("SmolLM2-135M-Instruct.Q4_1.gguf")
    framed = reply.token_frame.fill(text)
    assert framed == _frame(reply.chunk(Delta(content=text)))
    assert framed.startswith(b"data: ") and framed.endswith(b"\n\n")
    chunk = json.loads(framed[len(b"data: "):])
    assert chunk["choices"][0]["delta"] == {"content": text}
    assert chunk["id"] == reply.id and chunk["object"] == "chat.completion.chunk"


def test_frames_pass_through_as_they_are() -> None:
    assert _frame(b"data: {}\n\n") == b"data: {}\n\n"


# -- EventStream: the response that sends them ---------------------------------------------------


def stream(chunks: Any, fail_on_send: int | None = None) -> list[dict[str, Any]]:
    """What EventStream sends for `chunks`; the send numbered `fail_on_send` fails (client gone)."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        if fail_on_send is not None and len(sent) == fail_on_send:
            raise OSError("the client is gone")
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)  # no disconnect message: a failed send is how it ends
        return {}

    scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
    asyncio.run(EventStream(chunks)(scope, receive, send))  # type: ignore[arg-type]
    return sent


def test_an_event_stream_sends_each_chunk_then_done() -> None:
    async def chunks() -> AsyncIterator[Any]:
        yield {"n": 1}
        yield b"data: framed\n\n"

    sent = stream(chunks())
    assert sent[0]["type"] == "http.response.start"
    assert (b"content-type", b"text/event-stream; charset=utf-8") in sent[0]["headers"]
    assert [m["body"] for m in sent[1:]] == [b'data: {"n": 1}\n\n', b"data: framed\n\n", DONE]
    assert [m["more_body"] for m in sent[1:]] == [True, True, False]


@pytest.mark.parametrize(("error", "kind"), [(InvalidRequest("bad tool call"), "invalid_request_error"),
                                             (RuntimeError("boom"), "server_error")])
def test_a_failure_mid_stream_is_an_error_event_and_done(error: Exception, kind: str) -> None:
    async def chunks() -> AsyncIterator[Any]:
        yield {"n": 1}
        raise error

    sent = stream(chunks())
    last = sent[-1]
    assert last["more_body"] is False and last["body"].endswith(DONE)
    event = json.loads(last["body"][len(b"data: "):-len(DONE)])
    assert event["error"]["type"] == kind and "detail" not in event


def test_a_client_gone_closes_the_chunks_at_once() -> None:
    closed = []

    async def chunks() -> AsyncIterator[Any]:
        try:
            while True:
                yield {"n": 1}
        finally:
            closed.append(True)  # an engine's stream is told to stop here

    with pytest.raises(ClientDisconnect):
        stream(chunks(), fail_on_send=3)
    assert closed == [True]
