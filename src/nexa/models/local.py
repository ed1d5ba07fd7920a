"""`-lp PATH`: a model already on disk. Never copied, downloaded or registered."""

from __future__ import annotations

import logging
from pathlib import Path

from nexa.engines.onnx.layout import DIFFUSION, WHISPER, detect
from nexa.engines.speech import MODEL_FILE, VOCAB_FILE, VOICES_FILE, is_kokoro_folder
from nexa.errors import StartupError
from nexa.models import download as dl
from nexa.models.catalogue import DIFFUSION_EXTS, GGUF_EXTS
from nexa.models.gguf_header import is_projector, split_projectors
from nexa.models.types import ModelType, ResolvedModel

log = logging.getLogger("nexa.store")


def resolve_local_onnx(ref: str | None, model_type: ModelType | None) -> ResolvedModel:
    """An ONNX model is a folder; which engine fits it is the ONNX loader's call (engines/onnx).
    Without -mt the folder's layout gives its type (_onnx_folder_type)."""
    path = Path(ref or "").expanduser().resolve()
    if not ref or not path.is_dir():
        what = "a file" if path.is_file() else "not found"
        raise StartupError(f"`nexa server onnx -lp` needs an ONNX model folder; {path} is {what}")
    return ResolvedModel(name=path.name, path=path, model_type=model_type or _onnx_folder_type(path))


def _onnx_folder_type(path: Path) -> ModelType:
    """Without -mt: what the folder says it is where it says so (a Stable Diffusion pipeline, a
    Whisper export, a Kokoro folder), so /v1/models and the routing see the right type; else NLP,
    as -lp defaults to."""
    if is_kokoro_folder(path):
        return ModelType.TTS
    layout = detect(path)
    kinds = {DIFFUSION: ModelType.COMPUTER_VISION, WHISPER: ModelType.AUDIO}
    return kinds.get(layout.kind, ModelType.NLP) if layout is not None else ModelType.NLP


def resolve_local(ref: str | None, model_type: ModelType | None) -> ResolvedModel:
    if not ref:
        raise StartupError("-lp needs a path to a model file or folder")
    path = Path(ref).expanduser().resolve()
    if not path.exists():
        raise StartupError(f"Local model path not found: {path}. Check the path or drop -lp to use a catalogue name")
    if model_type is None:
        log.info("No -mt given for -lp %s; treating it as NLP (pass -mt to change)", path)
        model_type = ModelType.NLP
    if model_type == ModelType.AUDIO:
        return _whisper_folder(path)
    if model_type == ModelType.TTS:
        if not is_kokoro_folder(path):
            raise StartupError(
                f"-mt TTS needs a Kokoro folder holding {MODEL_FILE}, {VOICES_FILE} and {VOCAB_FILE}: {path}"
            )
        return ResolvedModel(name=path.name, path=path, model_type=model_type)
    exts = DIFFUSION_EXTS if model_type == ModelType.COMPUTER_VISION else GGUF_EXTS
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(exts))
        if not files and model_type == ModelType.TEXT_EMBEDDING and (path / "config.json").exists():
            return ResolvedModel(name=path.name, path=path, model_type=model_type)  # HF-format folder
        chosen, projectors = _model_in_folder(path, files, exts)
    else:
        chosen = path
        if is_projector(path):
            raise StartupError(
                f"{path} is a vision projector (clip), not a model: pass the model GGUF (with -mt MULTIMODAL)"
            )
        siblings = sorted(p for p in path.parent.iterdir() if p.is_file() and p.name.lower().endswith(GGUF_EXTS))
        _, projectors = split_projectors(siblings) if model_type == ModelType.MULTIMODAL else ([], [])
    projector: Path | None = None
    if model_type == ModelType.MULTIMODAL:
        if not projectors:
            raise StartupError(
                "-mt MULTIMODAL needs a vision projector (a GGUF whose architecture is clip)"
                f" beside the model in {chosen.parent}"
            )
        projector = projectors[0]
        if len(projectors) > 1:
            log.info("%d projectors in %s; using %s", len(projectors), chosen.parent, projector.name)
    return ResolvedModel(name=path.name, path=chosen, model_type=model_type, projector=projector)


def _whisper_folder(path: Path) -> ResolvedModel:
    if not path.is_dir():
        raise StartupError(f"-mt AUDIO needs a CTranslate2 (faster-whisper) folder with model.bin, not a file: {path}")
    try:
        dl.check_ct2_folder(path, str(path))
    except dl.DownloadError as e:
        raise StartupError(str(e)) from None
    return ResolvedModel(name=path.name, path=path, model_type=ModelType.AUDIO)


def _model_in_folder(folder: Path, files: list[Path], exts: tuple[str, ...]) -> tuple[Path, list[Path]]:
    """(the model file, the projectors) of a folder: the largest non-projector file is the model."""
    models, projectors = split_projectors(files)
    if not models:
        raise StartupError(
            f"No model file ({'/'.join(exts)}) in {folder}"
            + (" besides vision projectors" if projectors else "")
            + ": pass the model file itself, or a folder that holds one"
        )
    chosen = max(models, key=lambda p: (p.stat().st_size, p.name))
    if len(models) > 1:
        log.info(
            "%d model files in %s; using the largest, %s (pass the file path to pick another)",
            len(models),
            folder,
            chosen.name,
        )
    return chosen, projectors
