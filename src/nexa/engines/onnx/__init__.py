"""ONNX Runtime engines for `nexa server onnx MODEL`.

When settings.onnx is set, the loader (engines/loader.py) asks `fitting_layout` which engine
fits the model's folder (layout.py) and builds it:
- a folder with genai_config.json -> OnnxTextEngine (onnxruntime-genai: completions, chat);
- an .onnx encoder + tokenizer.json -> OnnxEmbeddingEngine (onnxruntime + tokenizers);
- a Stable Diffusion pipeline (model_index.json, unet/model.onnx...) -> OnnxDiffusionEngine;
- an optimum Whisper export -> OnnxWhisperEngine (onnxruntime: transcriptions, translations);
anything else is a StartupError naming what was found. Engine libraries are imported only
by the engine modules, so importing this package stays light (the model store uses layout.py).
"""

from __future__ import annotations

import logging

from nexa.engines.onnx.layout import (
    DIFFUSION,
    ENCODER,
    GENAI,
    WHISPER,
    Layout,
    describe_folder,
    detect,
    unsupported_reason,
)
from nexa.errors import StartupError
from nexa.models.types import ModelType, ResolvedModel

log = logging.getLogger("nexa.engine.onnx")

# Model types whose ONNX engines exist; the others are refused at start-up with the reason.
SERVED = {
    ModelType.NLP: GENAI, ModelType.TEXT_EMBEDDING: ENCODER, ModelType.COMPUTER_VISION: DIFFUSION,
    ModelType.AUDIO: WHISPER,
}  # fmt: skip


def fitting_layout(model: ResolvedModel) -> Layout:
    """The layout of the model's folder when an ONNX engine serves it; else a StartupError saying why."""
    folder = model.path
    if not folder.is_dir():
        raise StartupError(
            f"{folder} is a file; `nexa server onnx` serves ONNX model folders (an onnxruntime-genai folder "
            f"with genai_config.json, or model.onnx + tokenizer.json). Pass the folder, or drop `onnx` for GGUF."
        )
    reason = unsupported_reason(folder)
    if reason is not None:
        raise StartupError(f"{folder} is {reason}.")
    diffusion = _diffusion(model)
    if diffusion is not None:
        return diffusion
    layout = detect(folder)
    if layout is not None and layout.kind == WHISPER:
        return _whisper(model, layout)
    if model.model_type not in SERVED:
        raise StartupError(
            f"The ONNX variant serves text generation (NLP), embeddings (TEXT_EMBEDDING), images "
            f"(COMPUTER_VISION) and speech (AUDIO), not "
            f"{model.model_type.value} models: drop `onnx` to serve {model.model_type.value} models."
        )
    if layout is None:
        raise StartupError(
            f"{folder} fits no ONNX engine: found {describe_folder(folder)}. Expected an onnxruntime-genai "
            f"folder (genai_config.json + the .onnx decoder + tokenizer) for text, an encoder for embeddings "
            f"(model.onnx or onnx/model.onnx beside tokenizer.json), a Stable Diffusion pipeline (model_index.json) "
            f"for images, or an optimum Whisper export for speech (encoder_model.onnx + decoder_model*.onnx beside "
            f"config.json and tokenizer.json)."
        )
    if model.model_type == ModelType.AUDIO:
        raise StartupError(f"{folder} is not a Whisper speech model ({_what(layout)}): drop -mt AUDIO.")
    if layout.kind == GENAI:
        if model.model_type == ModelType.TEXT_EMBEDDING:
            raise StartupError(
                f"{folder} is an onnxruntime-genai text-generation model, not an embedding model: "
                f"drop -mt TEXT_EMBEDDING."
            )
        return layout
    if model.model_type != ModelType.TEXT_EMBEDDING:
        # -lp/-hf default to NLP when no -mt is given; the folder says what it is.
        log.info("%s is a sentence encoder: serving it for /v1/embeddings", folder.name)
    if layout.model_file is None:
        raise StartupError(f"{folder} is not an ONNX sentence encoder folder (model.onnx + tokenizer.json).")
    return layout


def _diffusion(model: ResolvedModel) -> Layout | None:
    """A Stable Diffusion pipeline whatever -mt says (-lp defaults to NLP); -mt COMPUTER_VISION on
    anything else is refused."""
    layout = detect(model.path)
    if layout is not None and layout.kind == DIFFUSION:
        if model.model_type != ModelType.COMPUTER_VISION:
            log.info("%s is a Stable Diffusion pipeline: serving it for images", model.path.name)
        return layout
    if model.model_type == ModelType.COMPUTER_VISION:
        raise StartupError(
            f"{model.path} is not an ONNX Stable Diffusion pipeline: found {describe_folder(model.path)}. Expected "
            f"model_index.json with text_encoder/, unet/, vae_decoder/, vae_encoder/ (each a model.onnx), tokenizer/ "
            f"and scheduler/, as `optimum-cli export onnx --model REPO OUT` writes them."
        )
    return None



def _what(layout: Layout) -> str:
    return "an onnxruntime-genai text-generation model" if layout.kind == GENAI else "a sentence encoder"


def _whisper(model: ResolvedModel, layout: Layout) -> Layout:
    if model.model_type not in (ModelType.AUDIO, ModelType.NLP):  # NLP: what -lp means without -mt
        raise StartupError(
            f"{model.path} is a Whisper speech model, not a {model.model_type.value} model: drop "
            f"-mt {model.model_type.value} (it serves /v1/audio/transcriptions and /translations)."
        )
    if model.model_type != ModelType.AUDIO:
        log.info("%s is a Whisper model: serving it for /v1/audio", model.path.name)
    return layout


__all__ = ["DIFFUSION", "GENAI", "SERVED", "WHISPER", "fitting_layout"]
