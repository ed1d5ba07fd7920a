"""POST /v1/chat/completions: the whole conversation through the model's chat template.
The work is in nexa.server.services.chat."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import StreamingResponse

from nexa.schemas.text import ChatCompletion, ChatCompletionChunk, ChatRequest
from nexa.server.openapi import ERRORS, streamed
from nexa.server.services import chat
from nexa.server.sse import sse_response

router = APIRouter(tags=["text"], responses=ERRORS)


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=streamed(ChatCompletionChunk))
async def chat_completions(body: ChatRequest, request: Request) -> ChatCompletion | StreamingResponse:
    answer = await chat.chat(request, body, frames=True)
    return answer if isinstance(answer, ChatCompletion) else sse_response(answer)
