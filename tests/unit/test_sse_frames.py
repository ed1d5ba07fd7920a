"""A streamed token's SSE frame is filled into a template rather than serialised: the bytes must
be those of the whole chunk serialised, whatever the token's text."""

from __future__ import annotations

import json

import pytest

from nexa.schemas.text import Delta
from nexa.server.services.generation import ChatReply
from nexa.server.sse import _frame

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
