"""One Settings object: built by the CLI from flags, passed into create_app, never global."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from nexa.models.types import ModelType

# --reload runs the app in a child process that uvicorn imports by name; the settings travel
# there in this environment variable (uvicorn cannot pass objects across the re-import).
SETTINGS_ENV = "NEXA_SERVER_SETTINGS"


def usable_cores() -> int:
    # llama.cpp is fastest with one thread per physical core; affinity respects cgroups/taskset.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


@dataclass
class Settings:
    model: str | None = None  # None: the default model (SmolLM2-135M-Instruct)
    source: str = "auto"  # auto (catalogue), local (-lp), hf (-hf), ms (-ms)
    model_type: ModelType | None = None
    onnx: bool = False
    host: str = "localhost"
    port: int = 8000
    reload: bool = False
    n_ctx: int = 2048
    n_threads: int = field(default_factory=usable_cores)
    parallel: int | None = None  # text requests decoded together; None: from cores and memory
    max_queue: int = 64  # text requests waiting for a slot before new ones get 503
    n_gpu_layers: int = -1  # all layers on the GPU when the wheel has one; ignored on CPU builds
    # Weights in llama.cpp's repacked CPU layouts (CPU_REPACK) where the CPU has kernels for them;
    # False keeps them in plain buffers (--no-repack). AMX is never used (engines/cpu_buffers.py).
    repack: bool = True
    cors_origins: list[str] = field(default_factory=lambda: ["*"])
    shutdown_grace_s: float = 30.0  # in-flight requests get this long to finish on Ctrl-C or SIGTERM
    log_level: str = "info"
    # Image generation (/v1/txt2img, /v1/img2img, /v1/images/*). Clients never choose paths:
    # images are written into image_output_dir (None: <cache root>/images) and served from there;
    # `image_path` may only read inside allowed_image_dirs (none by default).
    image_output_dir: str | None = None
    allowed_image_dirs: list[str] = field(default_factory=list)
    max_image_size: int = 1024  # largest width/height in pixels (multiples of 64)
    max_image_steps: int = 100
    max_images_n: int = 4  # images per request
    # Speech (/v1/audio/*). Uploads over max_upload_mb are refused with 413 (OpenAI's limit is
    # 25 MB); compute type None picks int8 on CPU and float16 on CUDA; audio of 30 s or more is
    # decoded whisper_batch_size windows at a time (0: never batch).
    max_upload_mb: float = 25.0
    whisper_compute_type: str | None = None
    whisper_batch_size: int = 8
    # Vision chat (image_url parts, MULTIMODAL models). `projector` overrides the model's own
    # projector file. Remote images are fetched with a deadline, a byte cap and a few redirects,
    # never from private/loopback/link-local addresses unless a host or network (CIDR) is in
    # allowed_image_hosts; `file://` URLs and paths read only inside allowed_image_dirs (above).
    projector: str | None = None
    remote_images: bool = True
    allowed_image_hosts: list[str] = field(default_factory=list)
    max_image_bytes: int = 20 * 1024 * 1024  # one input image, encoded
    image_fetch_timeout_s: float = 10.0  # the whole fetch, redirects included
    max_image_redirects: int = 3
    max_chat_images: int = 16  # images in one request, all messages together

    def to_env(self) -> str:
        data = asdict(self)
        data["model_type"] = self.model_type.value if self.model_type else None
        return json.dumps(data)

    @classmethod
    def from_env(cls) -> Settings:
        data = json.loads(os.environ[SETTINGS_ENV])
        if data.get("model_type"):
            data["model_type"] = ModelType(data["model_type"])
        return cls(**data)
