"""POST /v1/completions: OpenAI's text_completion plus the original's `result`.
The work is in nexa.server.services.completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import StreamingResponse

from nexa.schemas.text import Completion, CompletionChunk, CompletionRequest
from nexa.server.openapi import ERRORS, streamed
from nexa.server.services.completions import complete
from nexa.server.sse import sse_response

router = APIRouter(tags=["text"], responses=ERRORS)


@router.post("/v1/completions", response_model=Completion, responses=streamed(CompletionChunk))
async def completions(body: CompletionRequest, request: Request) -> Completion | StreamingResponse:
    answer = await complete(request, body)
    return answer if isinstance(answer, Completion) else sse_response(answer)
