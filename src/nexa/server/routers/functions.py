"""POST /v1/function-calling: the original Nexa server's endpoint, "call the most appropriate
function".

The same machinery as chat with tools (nexa.server.services.chat, nexa.structured), with the
original's answer shape: a chat.completion whose message has `content: null`, `tool_calls`, and
the legacy `function_call` (which the original sent with an empty name; ours carries the real
one). Its purpose is a call, so tool_choice "auto" lets the model pick which function, never
whether to call one.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import StreamingResponse

from nexa.schemas.text import ChatCompletion, ChatCompletionChunk
from nexa.schemas.tools import FunctionCallingRequest
from nexa.server.openapi import ERRORS, streamed
from nexa.server.services import chat
from nexa.server.sse import sse_response

router = APIRouter(tags=["tools"], responses=ERRORS)


@router.post("/v1/function-calling", response_model=ChatCompletion, responses=streamed(ChatCompletionChunk))
async def function_calling(body: FunctionCallingRequest, request: Request) -> ChatCompletion | StreamingResponse:
    answer = await chat.function_calling(request, body)
    return answer if isinstance(answer, ChatCompletion) else sse_response(answer)
