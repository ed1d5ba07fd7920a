"""POST /tokenize and /detokenize: the loaded text model's tokenizer, in llama-server's shapes.
The work is in nexa.server.services.tokenize."""

from __future__ import annotations

from fastapi import APIRouter, Request

from nexa.schemas.tokenize import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from nexa.server.openapi import ERRORS
from nexa.server.services import tokenize as service

router = APIRouter(tags=["text"], responses=ERRORS)


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    return await service.tokenize(request, body)


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    return await service.detokenize(request, body)
