"""The model store through the API: the original's /v1/download_model, /v1/download_progress and
/v1/delete_model, and OpenAI's DELETE /v1/models/{id}.

A client writes to the store only where the operator allowed it: --allow-pull lets requests
download (and so delete) models; without it these answer 403 saying so. Nothing loads here: a
downloaded model loads on its first request or POST /v1/models/{id}/load.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nexa.errors import Conflict, DownloadFailed, Forbidden, InvalidRequest, NotFound, StartupError
from nexa.models.progress import BOARD, FAILED, tracking
from nexa.models.types import ModelType
from nexa.schemas.models import DeleteStatus, DownloadRequest, DownloadStatus
from nexa.server.threads import in_thread

if TYPE_CHECKING:
    from nexa.models.manager import ModelManager
    from nexa.models.store import ModelStore

log = logging.getLogger("nexa.models")

PROGRESS_EVERY_S = 0.5


def _store(manager: ModelManager, what: str) -> ModelStore:
    if not manager.sources.allow_pull:
        raise Forbidden(
            f"{what} models through the API needs the server started with --allow-pull "
            f"(or use `nexa pull` / `nexa remove` on the server's machine).",
            code="downloads_disabled",
        )
    from nexa.models.store import ModelStore

    return manager.sources.store or ModelStore(onnx=manager.settings.onnx)


def _model_type(value: str | None) -> ModelType | None:
    try:
        return ModelType(value.upper()) if value else None
    except ValueError:
        names = ", ".join(t.value for t in ModelType)
        raise InvalidRequest(f"Unknown model_type {value!r}: use one of {names}.", param="model_type") from None


async def download(manager: ModelManager, body: DownloadRequest) -> DownloadStatus:
    store = _store(manager, "Downloading")
    source = "hf" if body.is_huggingface else "ms" if body.is_modelscope else "auto"
    name = body.model_path or store.catalogue.default
    kind = _model_type(body.model_type)
    if source == "auto" and store.catalogue.split_tag(name) is None:
        raise NotFound(
            f"'{name}' is not in the catalogue (see `nexa list --all`); for a Hugging Face or ModelScope "
            f"repository set is_huggingface or is_modelscope.",
            param="model_path", code="model_not_found",
        )

    def fetch() -> Any:
        with tracking(name), manager.pulling:  # tracked at once, so progress answers while it waits
            return store.pull(name, source=source, model_type=kind)

    log.info("downloading %s (requested through /v1/download_model)", name)
    try:
        model = await in_thread(fetch)
    except StartupError as exc:
        raise DownloadFailed(str(exc)) from None
    return DownloadStatus(
        message=f"Model {model.name} downloaded.",
        model_path=model.name,
        model_local_path=str(model.path),
        projector_local_path=str(model.projector) if model.projector else None,
        model_type=model.model_type.value,
    )


async def progress(manager: ModelManager, name: str) -> AsyncIterator[dict[str, Any]]:
    """`{"model_name", "progress": 0-100}` every half second until the download ends; a model
    already downloaded answers 100 once; a failed download ends with its error. Checked before
    the stream starts, so an unknown name is a plain 404."""
    download = BOARD.get(name)
    if download is None and await in_thread(manager.sources.find, name) is None:
        raise NotFound(
            f"No download of '{name}' is running or done: start one with POST /v1/download_model.",
            param="model_path", code="model_not_found",
        )

    async def events() -> AsyncIterator[dict[str, Any]]:
        while download is not None and download.state != FAILED and download.percent() < 100:
            yield {"model_name": name, "progress": download.percent()}
            await asyncio.sleep(PROGRESS_EVERY_S)
        if download is not None and download.state == FAILED:
            yield {"model_name": name, "error": download.error}
        else:
            yield {"model_name": name, "progress": 100}

    return events()


async def delete(manager: ModelManager, name: str) -> DeleteStatus:
    store = _store(manager, "Deleting")
    found = await in_thread(manager.sources.find, name)
    if found is None or found.origin != "store":
        raise NotFound(
            f"No downloaded model named '{name}' (see GET /v1/list_models).", param="model_path",
            code="model_not_found",
        )
    model = found.model
    in_use = manager.using(model.path)
    if in_use is not None:
        raise Conflict(
            f"The model '{in_use}' is loaded: unload it first (POST /v1/models/{in_use}/unload).",
            param="model_path", code="model_loaded",
        )
    try:
        removed: list[Path] = await in_thread(store.remove, name)
    except StartupError as exc:
        raise NotFound(str(exc), param="model_path", code="model_not_found") from None
    manager.forget(model.path)
    return DeleteStatus(message=f"Model {model.name} deleted.", deleted=[str(p) for p in removed])

