"""Settings -> engine: the only place that maps settings to engine constructor arguments.

`engine_call` names the engine class for a model ("module:Class") and the keyword arguments
its constructor gets, loading nothing (tests check that every setting arrives); `load_engine`
imports the class and builds it. Engine libraries are imported only when a model of their
type is loaded, so `import nexa` and `nexa --help` stay light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexa.config import Settings
from nexa.engines.base import Engine, Task
from nexa.errors import StartupError
from nexa.models.gguf_header import gguf_pooling_type
from nexa.models.types import ModelType, ResolvedModel

RANK = 4  # llama.cpp's LLAMA_POOLING_TYPE_RANK (the engines' modules import llama_cpp; this one must not)


@dataclass(frozen=True)
class EngineCall:
    target: str  # "module:Class"
    kwargs: dict[str, Any]


def _placement(settings: Settings) -> dict[str, Any]:
    """Where a GGUF's layers go (engines/llama/gpu.py); "auto" is resolved where llama.cpp is loaded."""
    return dict(n_gpu_layers=settings.n_gpu_layers, main_gpu=settings.main_gpu, tensor_split=settings.tensor_split)


def _llama(model: ResolvedModel, settings: Settings) -> EngineCall:
    return EngineCall(
        "nexa.engines.llama.engine:LlamaEngine",
        dict(
            path=model.path,
            name=model.name,
            chat_format=model.chat_format,
            n_ctx=settings.n_ctx,
            n_threads=settings.n_threads,
            **_placement(settings),
            parallel=settings.parallel,
            max_queue=settings.max_queue,
            repack=settings.repack,
            flash_attn=settings.flash_attn,
        ),
    )


def _vision(model: ResolvedModel, settings: Settings) -> EngineCall:
    projector = Path(settings.projector) if settings.projector else model.projector
    if projector is None:
        raise StartupError(
            f"{model.name} is a vision model but no projector was found: pass --projector PATH "
            "(its mmproj GGUF), or put the mmproj file beside the model."
        )
    if not projector.is_file():
        raise StartupError(f"The vision projector {projector} does not exist: check --projector.")
    # Everything a text model gets, so a llama.cpp setting cannot miss the vision engine.
    text = _llama(model, settings)
    return EngineCall("nexa.engines.llama.vision:VisionEngine", {**text.kwargs, "projector": projector})


def _embedding(model: ResolvedModel, settings: Settings) -> EngineCall:
    if model.path.is_dir():
        raise StartupError(
            f"{model.path} is a Hugging Face folder; this server runs embedding models as GGUF files. "
            f"Convert it first (llama.cpp's convert_hf_to_gguf.py) and pass the .gguf with -lp -mt TEXT_EMBEDDING."
        )
    # A reranker is a GGUF embedding model too (same architectures), told apart by its pooling.
    reranker = gguf_pooling_type(model.path) == RANK
    return EngineCall(
        "nexa.engines.llama.reranker:RerankerEngine" if reranker else "nexa.engines.llama.embedder:EmbeddingEngine",
        dict(
            path=model.path,
            name=model.name,
            n_ctx=settings.n_ctx,
            n_threads=settings.n_threads,
            **_placement(settings),
            repack=settings.repack,
        ),
    )


def _whisper(model: ResolvedModel, settings: Settings) -> EngineCall:
    return EngineCall(
        "nexa.engines.whisper:WhisperEngine",
        dict(
            path=model.path,
            name=model.name,
            device=settings.whisper_device,
            compute_type=settings.whisper_compute_type,
            cpu_threads=settings.n_threads,
            batch_size=settings.whisper_batch_size,
            max_queue=settings.max_queue,
        ),
    )


def _kokoro(model: ResolvedModel, settings: Settings) -> EngineCall:
    return EngineCall(
        "nexa.engines.speech:KokoroEngine",
        dict(folder=model.path, name=model.name, n_threads=settings.n_threads, max_queue=settings.max_queue),
    )


# Extra files a split checkpoint may need (ResolvedModel.extra_files key -> StableDiffusion argument).
_SD_EXTRA_ARGS = {
    "vae": "vae_path",
    "taesd": "taesd_path",
    "clip_l": "clip_l_path",
    "clip_g": "clip_g_path",
    "t5xxl": "t5xxl_path",
}


def diffusion_arguments(model: ResolvedModel, settings: Settings) -> dict[str, Any]:
    """StableDiffusion(...) keyword arguments for a resolved model.

    FLUX ships its transformer alone (tensor names without the `model.diffusion_model.` prefix)
    beside t5xxl/clip_l/vae files, so it is loaded as `diffusion_model_path`; SD3 files with
    separate text encoders carry all three (clip_l, clip_g, t5xxl) and load as a full model.
    """
    extra = dict(model.extra_files)
    unknown = sorted(set(extra) - set(_SD_EXTRA_ARGS) - {"diffusion_model"})
    if unknown:
        raise StartupError(
            f"Unknown extra model files {unknown} for {model.name}: expected some of {sorted(_SD_EXTRA_ARGS)}."
        )
    args: dict[str, Any] = {_SD_EXTRA_ARGS[k]: str(v) for k, v in extra.items() if k in _SD_EXTRA_ARGS}
    standalone = "t5xxl" in extra and "clip_g" not in extra
    args["diffusion_model_path" if standalone else "model_path"] = str(model.path)
    args.update(
        n_threads=settings.n_threads,  # the wrapper's default is half the cores
        vae_decode_only=False,  # img2img needs the encoder
        # verbose=False makes the wrapper point fds 1 and 2 at /dev/null during every call,
        # which would swallow the whole server's logs; the engine routes native logs instead.
        verbose=True,
    )
    return args


def _diffusion(model: ResolvedModel, settings: Settings) -> EngineCall:
    return EngineCall(
        "nexa.engines.diffusion:DiffusionEngine",
        dict(
            path=model.path,
            name=model.name,
            load_args=diffusion_arguments(model, settings),
            max_queue=settings.max_queue,
        ),
    )


def _onnx(model: ResolvedModel, settings: Settings) -> EngineCall:
    """`nexa server onnx`: the folder's layout picks the onnxruntime engine (engines/onnx)."""
    from nexa.engines.onnx import DIFFUSION, GENAI, WHISPER, fitting_layout

    if model.model_type == ModelType.TTS:
        return _kokoro(model, settings)  # Kokoro is an ONNX model already: one engine serves both variants
    layout = fitting_layout(model)
    if layout.kind == DIFFUSION:
        return EngineCall(
            "nexa.engines.onnx.diffusion:OnnxDiffusionEngine",
            dict(folder=layout.root, name=model.name, n_threads=settings.n_threads, max_queue=settings.max_queue),
        )
    if layout.kind == WHISPER:
        assert layout.model_file is not None
        return EngineCall(
            "nexa.engines.onnx.whisper:OnnxWhisperEngine",
            dict(folder=layout.root, graphs=layout.model_file.parent, name=model.name, n_threads=settings.n_threads,
                 max_queue=settings.max_queue),
        )
    common = dict(name=model.name, n_ctx=settings.n_ctx, n_threads=settings.n_threads)
    if layout.kind == GENAI:
        return EngineCall("nexa.engines.onnx.text:OnnxTextEngine", dict(folder=model.path, **common))
    return EngineCall(
        "nexa.engines.onnx.embeddings:OnnxEmbeddingEngine",
        dict(folder=layout.root, model_file=layout.model_file, **common),
    )


ENGINES: dict[ModelType, Callable[[ResolvedModel, Settings], EngineCall]] = {
    ModelType.NLP: _llama,
    ModelType.MULTIMODAL: _vision,
    ModelType.TEXT_EMBEDDING: _embedding,
    ModelType.AUDIO: _whisper,
    ModelType.COMPUTER_VISION: _diffusion,
    ModelType.TTS: _kokoro,
}


def engine_call(model: ResolvedModel, settings: Settings) -> EngineCall:
    """The engine class and its arguments for a model, from the settings; loads nothing."""
    return _onnx(model, settings) if settings.onnx else ENGINES[model.model_type](model, settings)


def _missing(model: ResolvedModel, exc: ModuleNotFoundError) -> StartupError:
    return StartupError(
        f"Model type {model.model_type.value} needs {exc.name}, which is not installed: "
        f"reinstall nexa with its dependencies (pip install -e .)."
    )


def _engine_class(model: ResolvedModel, call: EngineCall) -> type[Engine]:
    module_name, class_name = call.target.split(":")
    try:
        engine_class: type[Engine] = getattr(importlib.import_module(module_name), class_name)
    except ModuleNotFoundError as exc:
        raise _missing(model, exc) from exc
    return engine_class


def model_tasks(model: ResolvedModel, settings: Settings) -> frozenset[Task]:
    """The tasks a model will support once loaded, from its engine class; loads no weights.

    So a request is routed to a model of the right type before any model is loaded for it."""
    call = engine_call(model, settings)
    return _engine_class(model, call).tasks


def load_engine(model: ResolvedModel, settings: Settings) -> Engine:
    call = engine_call(model, settings)
    engine_class = _engine_class(model, call)
    try:
        return engine_class(**call.kwargs)
    except ModuleNotFoundError as exc:
        raise _missing(model, exc) from exc
