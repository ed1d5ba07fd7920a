"""The model store through the API (only with --allow-pull): the original Nexa server's
/v1/download_model, /v1/download_progress and /v1/delete_model, and OpenAI's DELETE
/v1/models/{id}. The work is in nexa.server.services.downloads."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from starlette.responses import StreamingResponse

from nexa.schemas.models import DeletedModel, DeleteStatus, DownloadRequest, DownloadStatus
from nexa.server.openapi import ERRORS
from nexa.server.services import downloads as service

router = APIRouter(tags=["models"], responses=ERRORS)
SSE = {"type": "string"}


@router.post("/v1/download_model", response_model=DownloadStatus)
async def download_model(request: Request, body: DownloadRequest | None = None) -> DownloadStatus:
    """Download a model into the store (the catalogue's default without a body); loads nothing."""
    return await service.download(request.app.state.manager, body or DownloadRequest())


@router.get(
    "/v1/download_progress",
    response_class=StreamingResponse,
    responses={200: {"description": "Server-sent events", "content": {"text/event-stream": {"schema": SSE}}}},
)
async def download_progress(model_path: str, request: Request) -> StreamingResponse:
    """Server-sent events `{"model_name", "progress": 0-100}` (or `{"model_name", "error"}`) until
    the download ends; the original's stream, so no `[DONE]` line."""
    events = await service.progress(request.app.state.manager, model_path)

    async def body() -> AsyncIterator[bytes]:
        async for event in events:
            yield f"data: {json.dumps(event)}\n\n".encode()

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.delete("/v1/delete_model", response_model=DeleteStatus)
async def delete_model(body: DownloadRequest, request: Request) -> DeleteStatus:
    """Delete a downloaded model's files; a loaded model must be unloaded first (409)."""
    return await service.delete(request.app.state.manager, body.model_path or "")


@router.delete("/v1/models/{model_id:path}", response_model=DeletedModel)
async def delete(model_id: str, request: Request) -> DeletedModel:
    """OpenAI's spelling of /v1/delete_model."""
    await service.delete(request.app.state.manager, model_id)
    return DeletedModel(id=model_id, deleted=True)
