"""POST /v1/responses: OpenAI's Responses API, stateless. The work is in
nexa.server.services.responses; here the stream's typed events are framed as server-sent
events, each with its `event:` line as OpenAI sends them (and no `[DONE]`: the last event,
`response.completed`, says the stream is over)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from starlette.responses import StreamingResponse

from nexa.schemas.responses import ResponseObject, ResponsesRequest, StreamEvent
from nexa.server.openapi import ERRORS, Responses
from nexa.server.services import responses

router = APIRouter(tags=["text"], responses=ERRORS)

STREAMED: Responses = {
    200: {
        "description": "The response as JSON; with `stream: true`, `text/event-stream`: `event: <type>` and "
        "`data: {json}` per event, from `response.created` to `response.completed` (or `response.incomplete`).",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.post("/v1/responses", response_model=ResponseObject, responses=STREAMED)
async def create_response(body: ResponsesRequest, request: Request) -> ResponseObject | StreamingResponse:
    answer = await responses.create(request, body)
    return answer if isinstance(answer, ResponseObject) else _event_stream(answer)


def _event_stream(events: AsyncIterator[StreamEvent]) -> StreamingResponse:
    async def frames() -> AsyncIterator[bytes]:
        async for event in events:
            yield f"event: {event.type}\ndata: {event.model_dump_json()}\n\n".encode()

    return StreamingResponse(
        frames(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
