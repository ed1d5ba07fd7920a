"""Responses of the service endpoints: /v1/models (OpenAI's model list), loading and unloading
models (ours and the original Nexa server's), and /health."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict

from nexa.schemas.common import KeepAlive, RequestModel, ResponseModel

State = Literal["loaded", "loading", "not_loaded", "unloading"]


class ModelCard(ResponseModel):
    """OpenAI's model object, plus where the model comes from, its size and whether it is loaded,
    and what a loaded engine tells of itself (`n_ctx`, `parallel`, `samplers`...: each engine's
    `describe()`, passed through as extra keys)."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    tasks: list[str]
    model_type: str | None = None
    path: str | None = None
    size: int | None = None  # bytes on disk
    state: State | None = None
    origin: str | None = None  # "command line", "store", "models dir", "catalogue"
    default: bool | None = None  # the model requests that name none reach
    pid: int | None = None  # the process that runs it, where it runs in one of its own


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class LoadRequest(RequestModel):
    """POST /v1/models/{id}/load: how long the model stays loaded once idle (default: the server's)."""

    keep_alive: KeepAlive = None


class NexaModelRequest(RequestModel):
    """The original Nexa server's /v1/load_model and /v1/unload_model body."""

    model_path: str | None = None
    model_type: str | None = None
    is_local_path: bool = False
    is_huggingface: bool = False
    is_modelscope: bool = False
    local_projector_path: str | None = None
    keep_alive: KeepAlive = None


class NexaModelStatus(ResponseModel):
    status: Literal["succeed"] = "succeed"
    message: str
    model_type: str | None
    model: str


class DownloadRequest(RequestModel):
    """The original's /v1/download_model and /v1/delete_model body: a catalogue name, or with
    is_huggingface/is_modelscope a repository (`org/name[:quant]`)."""

    model_path: str | None = None  # None: the catalogue's default model
    model_type: str | None = None
    is_huggingface: bool = False
    is_modelscope: bool = False


class DownloadStatus(ResponseModel):
    status: Literal["success"] = "success"
    message: str
    model_path: str  # the name the model is stored under (what requests and `nexa list` use)
    model_local_path: str
    projector_local_path: str | None = None
    model_type: str


class DeleteStatus(ResponseModel):
    status: Literal["success"] = "success"
    message: str
    deleted: list[str]  # the files removed


class DeletedModel(ResponseModel):
    """OpenAI's answer to DELETE /v1/models/{model}."""

    id: str
    object: Literal["model"] = "model"
    deleted: bool


class LoadedModel(ResponseModel):
    id: str
    state: State
    pid: int | None
    # Where it runs once loaded: {"n_gpu_layers", "gpu_layers", "layers", "devices"} for llama.cpp
    # models, {"device", "compute_type"} for Whisper; None while loading or where not said.
    offload: dict[str, Any] | None = None


class Health(ResponseModel):
    status: Literal["ok"] = "ok"
    model: str  # the default model
    models: list[LoadedModel] = []


class ServerInfo(ResponseModel):
    """GET /v1/server: what a person trying the server wants to see of it."""

    version: str
    settings: dict[str, Any]  # every setting (flag, NEXA_* variable or default) but the secret ones
