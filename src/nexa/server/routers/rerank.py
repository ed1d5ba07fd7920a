"""POST /v1/rerank (also at /rerank and /v1/reranking, as llama-server serves it): documents
ranked against a query. The work is in nexa.server.services.rerank."""

from __future__ import annotations

from fastapi import APIRouter, Request

from nexa.schemas.rerank import RerankRequest, RerankResponse
from nexa.server.openapi import ERRORS
from nexa.server.services import rerank as service

router = APIRouter(tags=["embeddings"], responses=ERRORS)


@router.post("/v1/rerank", response_model=RerankResponse)
@router.post("/rerank", response_model=RerankResponse, include_in_schema=False)
@router.post("/v1/reranking", response_model=RerankResponse, include_in_schema=False)
async def rerank(body: RerankRequest, request: Request) -> RerankResponse:
    return await service.rerank(request, body)
