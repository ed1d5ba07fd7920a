"""Responses of the service endpoints: /v1/models (OpenAI's model list) and /health."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict

from nexa.schemas.common import ResponseModel


class ModelCard(ResponseModel):
    """OpenAI's model object, plus what the engine tells of itself (`n_ctx`, `parallel`,
    `samplers`...: each engine's `describe()`, passed through as extra keys)."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    tasks: list[str]
    model_type: str | None = None
    path: str | None = None


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(ResponseModel):
    status: Literal["ok"] = "ok"
    model: str
