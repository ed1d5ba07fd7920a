"""One Settings model: its fields, defaults, range checks, `nexa server` flags and NEXA_* variables.

Every setting is written once, here. The CLI builds its `nexa server` flags from the `Flag` on
each field (cli.py), pydantic-settings reads `NEXA_<FIELD>` environment variables (NEXA_N_CTX,
NEXA_PORT; lists as JSON: NEXA_CORS_ORIGINS='["http://localhost:3000"]'), and engines that keep
keyword defaults take them from `default()`. Flags win over variables, variables over defaults.
Settings are passed into create_app, never read from a global.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from nexa.models.types import ModelType

# --reload runs the app in a child process that uvicorn imports by name; the settings travel
# there in this environment variable (uvicorn cannot pass objects across the re-import).
SETTINGS_ENV = "NEXA_SERVER_SETTINGS"
ENV_PREFIX = "NEXA_"


FLASH_ATTN_CTX = 8192  # --flash-attn auto uses it on the CPU above this context (its buffers grow less)


def usable_cores() -> int:
    # llama.cpp is fastest with one thread per physical core; affinity respects cgroups/taskset.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Flag:
    """How a field appears on `nexa server`'s command line; its help is the field's description.

    A bool field whose default is True is switched off by its flag (--no-repack); a list field's
    flag is repeatable. `scale` converts the flag's unit to the field's (MiB -> bytes).
    """

    names: tuple[str, ...]  # the first is the one error messages name
    metavar: str | None = None
    shown_default: str | None = None  # the help's "(default: ...)" where the value says little
    help: str | None = None  # the flag's own help where it reads differently from the field's doc
    scale: int = 1
    text: bool = False  # the flag hands its text to the field's validator ("8GB", "5m")


def flag(*names: str, **options: Any) -> Flag:
    return Flag(names, **options)


class Settings(BaseSettings):
    """The server's settings; `Settings(n_ctx=4096)` in code, flags on the command line."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    # -- the models: set by `nexa server [onnx] MODEL... [-lp|-hf|-ms] [-mt TYPE]` (cli.py) -------
    model: str | None = Field(None, description="the model to serve; None: the default (SmolLM2-135M-Instruct)")
    source: Literal["auto", "local", "hf", "ms"] = Field(
        "auto", description="where MODEL is: auto (catalogue), local (-lp), hf (-hf), ms (-ms)"
    )
    model_type: ModelType | None = Field(None, description="the model's type (-mt); None: known or NLP")
    onnx: bool = Field(False, description="serve the ONNX Runtime variant (`nexa server onnx MODEL`)")
    models: list[str] = Field(
        default_factory=list, description="more models to serve beside `model` (`nexa server A B C`: B and C)"
    )

    # -- several models: routing by `model`, loading on demand, unloading (models/pool.py) --------
    models_dir: Annotated[str | None, flag("--models-dir", metavar="DIR")] = Field(
        None, description="also serve the GGUF files and model folders in DIR, by file name without extension"
    )
    allow_pull: Annotated[bool, flag("--allow-pull")] = Field(
        False, description="download a catalogue model on the first request that names it"
    )
    strict_model: Annotated[bool, flag("--strict-model")] = Field(
        False, description="answer 404 model_not_found to a `model` that names nothing servable, "
        "instead of using the default model",
    )
    keep_alive: Annotated[float, flag("--keep-alive", metavar="SECONDS", text=True)] = Field(
        300.0, ge=-1, description="seconds an idle model loaded on demand stays loaded (also 5m, 1h); -1: forever, "
        "0: unload after each request; models named on the command line stay loaded",
    )
    max_models: Annotated[int | None, flag("--max-models", metavar="N", shown_default="no limit")] = Field(
        None, ge=1, description="most models loaded at once; past it the least recently used idle one is unloaded"
    )
    max_memory: Annotated[int | None, flag("--max-memory", metavar="SIZE", shown_default="no limit", text=True)] = (
        Field(None, ge=1, description="most memory the loaded models may use (bytes, or 8GB, 512MiB); past it the "
              "least recently used idle ones are unloaded")
    )

    # -- the HTTP server ------------------------------------------------------------------------
    host: Annotated[str, flag("--host")] = Field("localhost", description="host to bind")
    port: Annotated[int, flag("--port")] = Field(8000, ge=1, le=65535, description="port to bind")
    reload: Annotated[bool, flag("--reload")] = Field(False, description="restart the server when the code changes")
    cors_origins: Annotated[list[str], flag("--cors-origin", metavar="ORIGIN")] = Field(
        default_factory=list,
        description="let browser pages from ORIGIN call the API (CORS); pages on localhost and the server's own "
        "origin always may",
    )
    shutdown_grace_s: Annotated[float, flag("--shutdown-grace", metavar="SECONDS")] = Field(
        30.0, ge=0, description="seconds in-flight requests get to finish on Ctrl-C or SIGTERM"
    )
    log_level: Annotated[Literal["debug", "info", "warning", "error"], flag("--log-level")] = Field(
        "info", description="what the server logs"
    )
    # A process per model (nexa/workers): a native crash ends that model's worker, not the server,
    # and unloading a model returns all of its memory. Off: for debuggers and profilers.
    workers: Annotated[
        bool,
        flag(
            "--no-workers",
            help="run models inside the server process, not one worker process each (for debuggers and "
            "profilers; a native crash then ends the server)",
        ),
    ] = Field(True, description="run each model in a worker process of its own")

    # -- access: API keys and the Host header (server/security.py) -------------------------------
    # NoDecode: NEXA_API_KEY is one key as written, not a JSON list.
    api_key: Annotated[list[str], NoDecode, flag("--api-key", metavar="KEY")] = Field(
        default_factory=list, repr=False, description="require this key (`Authorization: Bearer KEY` or `x-api-key`)"
    )
    api_key_file: Annotated[str | None, flag("--api-key-file", metavar="PATH")] = Field(
        None, description="require one of the keys in PATH, one per line"
    )
    insecure_public: Annotated[
        bool, flag("--insecure-public", help="serve a non-loopback --host to anyone, without an API key")
    ] = Field(False, description="allow a non-loopback host without an API key")
    allowed_hosts: Annotated[list[str], flag("--allowed-host", metavar="NAME")] = Field(
        default_factory=list,
        description="on a loopback --host, also serve requests whose Host header is NAME (besides localhost, "
        "127.0.0.1 and [::1])",
    )

    @field_validator("api_key", mode="before")
    @classmethod
    def _one_key_from_env(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    # -- llama.cpp (text, chat, vision and embedding models) -----------------------------------
    n_ctx: Annotated[int, flag("--nctx", "-c")] = Field(2048, ge=16, description="context length in tokens")
    n_threads: Annotated[int, flag("--threads", "-t", shown_default="all usable cores")] = Field(
        default_factory=usable_cores, ge=1, description="CPU threads for inference"
    )
    parallel: Annotated[int | None, flag("--parallel", "-np", shown_default="from cores and memory")] = Field(
        None, ge=1, description="requests a text model decodes together, each with the full --nctx"
    )
    max_queue: Annotated[int, flag("--max-queue")] = Field(
        64, ge=0, description="requests that may wait for a model (a text slot, an image or speech turn); more get 503"
    )
    # GPU placement (engines/llama/gpu.py); `nexa gpu` says what this build and machine offer.
    n_gpu_layers: Annotated[
        int | Literal["auto", "all"], flag("--n-gpu-layers", "-ngl", metavar="N|auto|all", text=True)
    ] = Field(
        "auto", description="model layers on the GPU: a number, all, or auto (all where llama.cpp has a GPU, "
        "else none); CPU-only builds of llama.cpp ignore it",
    )
    main_gpu: Annotated[int | None, flag("--main-gpu", "-mg", metavar="N", shown_default="layers over every GPU")] = (
        Field(None, ge=0, description="put the whole model on GPU N (llama.cpp's device order, see `nexa gpu`)")
    )
    tensor_split: Annotated[
        tuple[float, ...] | None, NoDecode, flag("--tensor-split", "-ts", metavar="A,B,...", text=True)
    ] = Field(None, description="spread the layers over the GPUs in these proportions (3,1: three quarters on GPU 0)")
    # Weights in llama.cpp's repacked CPU layouts (CPU_REPACK) where the CPU has kernels for them;
    # False keeps them in plain buffers. AMX is never used (engines/llama/cpu_buffers.py).
    repack: Annotated[
        bool,
        flag(
            "--no-repack",
            help="keep llama.cpp weights in plain CPU buffers, not its repacked layouts (for a kernel bug; "
            "slower prompts on Q4_0/Q4_K/Q8_0); AMX is never used either way",
        ),
    ] = Field(True, description="weights in llama.cpp's repacked CPU layouts where the CPU has kernels for them")
    # llama.cpp's flash attention for text models (engines/llama/engine.py:use_flash_attn says when).
    flash_attn: Annotated[Literal["auto", "on", "off"], flag("--flash-attn", "-fa", metavar="auto|on|off")] = Field(
        "auto", description="llama.cpp's flash attention for text models: auto uses it where layers run on a GPU "
        f"or the context is over {FLASH_ATTN_CTX} tokens, not on the CPU below that (tokens decode faster without it)",
    )

    # -- image generation (/v1/txt2img, /v1/img2img, /v1/images/*) -------------------------------
    # Clients never choose paths: images are written into image_output_dir and served from there;
    # `image_path` (and file:// chat images) may only read inside allowed_image_dirs.
    image_output_dir: Annotated[str | None, flag("--output-dir", shown_default="<cache>/images")] = Field(
        None, description="directory for generated images"
    )
    allowed_image_dirs: Annotated[list[str], flag("--allow-dir", metavar="DIR")] = Field(
        default_factory=list,
        description="let image_path and chat image URLs (file://, paths) read files inside DIR",
    )
    max_image_size: Annotated[int, flag("--max-image-size")] = Field(
        1024, ge=64, description="largest image width/height"
    )
    max_image_steps: Annotated[int, flag("--max-image-steps")] = Field(
        100, ge=1, description="most sampling steps per image"
    )
    max_images_n: Annotated[int, flag("--max-images")] = Field(4, ge=1, description="most images per request")

    # -- speech (/v1/audio/*) ------------------------------------------------------------------
    max_upload_mb: Annotated[float, flag("--max-upload-mb")] = Field(  # OpenAI's limit is 25 MB
        25.0, gt=0, description="largest audio upload in MiB"
    )
    whisper_compute_type: Annotated[
        str | None,
        flag("--compute-type", shown_default="float16 on CUDA; on CPU float32 for tiny/base, int8 for larger"),
    ] = Field(None, description="Whisper compute type: int8, float16, float32...")
    whisper_device: Annotated[Literal["auto", "cpu", "cuda"], flag("--whisper-device")] = Field(
        "auto", description="where Whisper runs: cuda (needs CUDA's cuBLAS and cuDNN), cpu, or auto (cuda when "
        "ctranslate2 finds a GPU)",
    )
    whisper_batch_size: Annotated[int, flag("--whisper-batch-size")] = Field(
        8, ge=0, description="30-second windows decoded at once for audio of 30 s or more; 0: never batch"
    )

    # -- vision chat (image_url parts on MULTIMODAL models) --------------------------------------
    # Remote images are fetched with a deadline, a byte cap and a few redirects, never from
    # private/loopback/link-local addresses unless a host or network is in allowed_image_hosts.
    projector: Annotated[str | None, flag("--projector", "--mmproj", metavar="PATH")] = Field(
        None, description="vision projector GGUF (mmproj) for the model"
    )
    remote_images: Annotated[
        bool, flag("--no-remote-images", help="refuse http(s) image URLs in chat messages")
    ] = Field(True, description="fetch http(s) image URLs in chat messages")
    allowed_image_hosts: Annotated[list[str], flag("--allow-image-host", metavar="HOST|CIDR")] = Field(
        default_factory=list,
        description="let image URLs reach this host or network despite it being private/loopback",
    )
    max_image_bytes: Annotated[int, flag("--max-image-mb", scale=2**20, help="largest input image in MiB")] = Field(
        20 * 2**20, gt=0, description="largest input image in bytes, encoded"
    )
    image_fetch_timeout_s: Annotated[float, flag("--image-fetch-timeout", metavar="SECONDS")] = Field(
        10.0, gt=0, description="seconds to fetch one remote image, redirects included"
    )
    max_image_redirects: Annotated[int, flag("--max-image-redirects")] = Field(
        3, ge=0, description="redirects followed when fetching one image"
    )
    max_chat_images: Annotated[int, flag("--max-chat-images")] = Field(
        16, ge=1, description="most images in one chat request, all messages together"
    )

    # -- request bounds: refused before the work, so one request cannot hold the server ---------
    # Uploads (multipart) keep their own limits above; a multipart body may be as large as the
    # largest of them (two images: input and mask).
    max_body_bytes: Annotated[int, flag("--max-body-mb", scale=2**20, help="largest JSON request body in MiB")] = (
        Field(32 * 2**20, gt=0, description="largest request body in bytes (multipart: the upload limits apply)")
    )
    # A 1024-message history is already far past any context this server runs; refusing more
    # keeps a 16 MiB body of empty messages from being rendered through the chat template.
    max_messages: Annotated[int, flag("--max-messages")] = Field(
        1024, ge=1, description="most messages in one chat request"
    )
    max_embedding_inputs: Annotated[int, flag("--max-embedding-inputs")] = Field(
        2048, ge=1, description="most inputs in one embeddings request, and documents in one rerank request "
        "(OpenAI's limit on inputs is 2048)"
    )
    # Decoding an image of the largest allowed size takes a core for a second or more: a few threads
    # do it for every request, and past them at most --max-queue requests wait (then 503).
    preprocess_threads: Annotated[int, flag("--preprocess-threads", shown_default="half the usable cores, 1 to 4")] = (
        Field(default_factory=lambda: max(1, min(4, usable_cores() // 2)), ge=1,
              description="threads that decode input images (chat image_url, img2img, edits)")
    )
    # stable-diffusion.cpp kills the process on a prompt of 32 KiB or more; CLIP reads 77 tokens
    # per chunk, so 4096 characters is already far more than an image prompt needs.
    max_image_prompt_chars: Annotated[int, flag("--max-image-prompt-chars")] = Field(
        4096, ge=1, le=30000, description="longest image prompt and negative_prompt in characters"
    )
    # Three hours (a long meeting or lecture) decode to 0.7 GB of float32 samples at 16 kHz.
    max_audio_seconds: Annotated[float, flag("--max-audio-seconds")] = Field(
        3 * 3600.0, gt=0, description="longest audio a transcription or translation decodes, in seconds"
    )

    @field_validator("n_gpu_layers", mode="before")
    @classmethod
    def _gpu_layers(cls, value: Any) -> Any:
        text = str(value).strip().lower()
        if text in ("auto", "all", "-1"):  # -1: llama.cpp's own spelling of all
            return "all" if text == "-1" else text
        if not text.isdigit():
            raise ValueError("write a number of layers, all, or auto")
        return int(text)

    @field_validator("tensor_split", mode="before")
    @classmethod
    def _proportions(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            parts = json.loads(text) if text.startswith("[") else text.split(",")
            try:
                value = tuple(float(p) for p in parts)
            except ValueError:
                raise ValueError("write proportions separated by commas, such as 3,1") from None
        if value is not None and (any(p < 0 for p in value) or not any(value)):
            raise ValueError("proportions must be 0 or more, and not all 0")
        return value

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _keep_alive_duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("max_memory", mode="before")
    @classmethod
    def _memory_size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    @field_validator("models_dir")
    @classmethod
    def _absolute_models_dir(cls, path: str | None) -> str | None:
        return os.path.abspath(path) if path else None

    @field_validator("allowed_image_dirs")
    @classmethod
    def _absolute_dirs(cls, dirs: list[str]) -> list[str]:
        return [os.path.abspath(d) for d in dirs]

    @field_validator("projector")
    @classmethod
    def _absolute_projector(cls, path: str | None) -> str | None:
        return os.path.abspath(path) if path else None

    def to_env(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_env(cls) -> Settings:
        return cls.model_validate_json(os.environ[SETTINGS_ENV])


_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ms|s|m|h)?")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from "300", "5m", "1h30m", "-1" (Ollama's keep_alive spellings); ValueError otherwise."""
    text = text.strip().lower()
    parts = _DURATION.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration: write seconds (300), or 5m, 1h, 90s")
    return sum(float(n) * _SECONDS[u or "s"] for n, u in parts)


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?")


def parse_size(text: str) -> int:
    """Bytes from "8GB" (10^9), "8GiB" (2^30), "512MiB", "1e9"-free plain integers; ValueError otherwise."""
    match = _SIZE.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a size: write bytes, or 8GB, 512MiB")
    number, unit = match.groups()
    power = "kmgt".index(unit[0]) + 1 if unit else 0
    return int(float(number) * (1024 if unit and unit.endswith("i") else 1000) ** power)


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def default(field: str) -> Any:
    """A field's default, for keyword defaults elsewhere (engines), so none is written twice."""
    return Settings.model_fields[field].get_default(call_default_factory=True)


def cli_flag(field: str) -> Flag | None:
    return next((m for m in Settings.model_fields[field].metadata if isinstance(m, Flag)), None)
