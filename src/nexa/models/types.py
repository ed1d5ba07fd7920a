"""Plain data shared by the model store, the manager and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


class ModelType(str, Enum):
    """The `-mt` choices of the Nexa server API (plus TEXT_EMBEDDING and TTS, which the original named too)."""

    NLP = "NLP"
    COMPUTER_VISION = "COMPUTER_VISION"
    MULTIMODAL = "MULTIMODAL"
    AUDIO = "AUDIO"
    TEXT_EMBEDDING = "TEXT_EMBEDDING"
    TTS = "TTS"  # text to speech (the original's name for the kind; its server could not load one)


@dataclass(frozen=True)
class ResolvedModel:
    """A model whose files are on disk, ready for an engine to load."""

    name: str  # the id shown by /v1/models: catalogue name, repo:file, or local file name
    path: Path  # the main file (GGUF) or folder (CTranslate2, ONNX)
    model_type: ModelType
    chat_format: str | None = None  # llama-cpp-python chat format name; None: the GGUF's own template
    projector: Path | None = None  # vision projector (MULTIMODAL)
    extra_files: dict[str, Path] = field(default_factory=dict)  # e.g. FLUX's t5xxl/clip_l/vae
