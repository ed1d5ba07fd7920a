"""`nexa server | pull | list | remove`: flags -> Settings -> store -> app -> uvicorn.

No logic beyond wiring; no prompt ever waits on stdin; a user mistake prints one line
saying what to do and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nexa import __version__
from nexa.config import SETTINGS_ENV, Settings
from nexa.errors import StartupError
from nexa.models.types import ModelType

if TYPE_CHECKING:
    pass

log = logging.getLogger("nexa")


def _add_source_flags(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("-lp", "--local_path", action="store_true", help="MODEL is a local file or folder")
    src.add_argument(
        "-hf", "--huggingface", action="store_true", help="MODEL is a Hugging Face repo (repo, repo:FILE or repo:QUANT)"
    )
    src.add_argument(
        "-ms", "--modelscope", action="store_true", help="MODEL is a ModelScope repo (repo, repo:FILE or repo:QUANT)"
    )
    p.add_argument(
        "-mt",
        "--model_type",
        choices=[t.value for t in ModelType],
        help="model type; only with -lp, -hf or -ms (catalogue names know their type)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nexa", description="Local AI inference server.")
    parser.add_argument("--version", action="version", version=f"nexa {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("server", help="serve a model over HTTP (OpenAI- and Nexa-compatible)")
    s.add_argument(
        "model_path",
        nargs="?",
        help="catalogue name, Name:tag, path (-lp) or repo (-hf/-ms); default: SmolLM2-135M-Instruct. "
        "Write `onnx MODEL` for the ONNX Runtime variant.",
    )
    s.add_argument("onnx_model", nargs="?", help=argparse.SUPPRESS)
    _add_source_flags(s)
    s.add_argument("--host", default="localhost", help="host to bind (default: localhost)")
    s.add_argument("--port", type=int, default=8000, help="port to bind (default: 8000)")
    s.add_argument("--reload", action="store_true", help="restart the server when the code changes")
    s.add_argument("--nctx", type=int, default=2048, help="context length in tokens (default: 2048)")
    s.add_argument("--threads", type=int, default=None, help="CPU threads for inference (default: all usable cores)")
    s.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="requests a text model decodes together, each with the full --nctx (default: from cores and memory)",
    )
    s.add_argument(
        "--max-queue", type=int, default=64, help="requests that may wait for a slot; more get 503 (default: 64)"
    )
    s.add_argument(
        "--no-repack",
        action="store_true",
        help="keep llama.cpp weights in plain CPU buffers, not its repacked layouts (for a kernel bug; slower "
        "prompts on Q4_0/Q4_K/Q8_0); AMX is never used either way",
    )
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    # Image models: where images go and which server files `image_path` may read.
    s.add_argument("--output-dir", default=None, help="directory for generated images (default: <cache>/images)")
    s.add_argument(
        "--allow-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="let image_path and chat image URLs (file://, paths) read files inside DIR (repeatable; default: none)",
    )
    s.add_argument("--max-image-size", type=int, default=1024, help="largest image width/height (default: 1024)")
    s.add_argument("--max-image-steps", type=int, default=100, help="most sampling steps per image (default: 100)")
    s.add_argument("--max-images", type=int, default=4, help="most images per request (default: 4)")
    # Speech models (/v1/audio/*).
    s.add_argument("--max-upload-mb", type=float, default=25.0, help="largest audio upload in MiB (default: 25)")
    s.add_argument(
        "--compute-type",
        default=None,
        help="Whisper compute type: int8, float16, float32... (default: int8 on CPU, float16 on CUDA)",
    )
    s.add_argument(
        "--whisper-batch-size",
        type=int,
        default=8,
        help="30-second windows decoded at once for audio of 30 s or more; 0: never batch (default: 8)",
    )
    # Vision chat (image_url parts on MULTIMODAL models): the projector and where images may come from.
    s.add_argument("--projector", default=None, metavar="PATH", help="vision projector GGUF (mmproj) for the model")
    s.add_argument("--no-remote-images", action="store_true", help="refuse http(s) image URLs in chat messages")
    s.add_argument(
        "--allow-image-host",
        action="append",
        default=[],
        metavar="HOST|CIDR",
        help="let image URLs reach this host or network despite it being private/loopback (repeatable)",
    )
    s.add_argument("--max-image-mb", type=float, default=20.0, help="largest input image in MiB (default: 20)")
    s.add_argument("--max-chat-images", type=int, default=16, help="most images in one chat request (default: 16)")

    p = sub.add_parser("pull", help="download a model into the cache")
    p.add_argument("model_path")
    _add_source_flags(p)
    sub.add_parser("list", help="list cached models")
    r = sub.add_parser("remove", help="delete a cached model")
    r.add_argument("model_path")
    return parser


def _source(args: argparse.Namespace) -> str:
    if args.local_path:
        return "local"
    if args.huggingface:
        return "hf"
    if args.modelscope:
        return "ms"
    return "auto"


def _model_type(args: argparse.Namespace, source: str) -> ModelType | None:
    if args.model_type and source == "auto":
        raise StartupError("-mt/--model_type needs -lp, -hf or -ms (catalogue names know their type).")
    return ModelType(args.model_type) if args.model_type else None


def settings_from_args(args: argparse.Namespace) -> Settings:
    model, onnx = args.model_path, False
    if model == "onnx":
        onnx, model = True, args.onnx_model
        if not model:
            raise StartupError("`nexa server onnx` needs a model: nexa server onnx MODEL")
    elif args.onnx_model:
        raise StartupError(f"Unexpected argument {args.onnx_model!r}: give one model (or `onnx MODEL`).")
    if args.nctx < 16:
        raise StartupError("--nctx must be at least 16 tokens.")
    if not 0 < args.port < 65536:
        raise StartupError("--port must be between 1 and 65535.")
    source = _source(args)
    settings = Settings(
        model=model,
        source=source,
        model_type=_model_type(args, source),
        onnx=onnx,
        host=args.host,
        port=args.port,
        reload=args.reload,
        n_ctx=args.nctx,
        log_level=args.log_level,
    )
    if args.threads:
        settings.n_threads = args.threads
    if (args.parallel is not None and args.parallel < 1) or args.max_queue < 0:
        raise StartupError("--parallel must be at least 1 and --max-queue at least 0.")
    settings.parallel, settings.max_queue = args.parallel, args.max_queue
    settings.repack = not args.no_repack
    if args.max_image_size < 64 or args.max_image_steps < 1 or args.max_images < 1:
        raise StartupError("--max-image-size must be at least 64, --max-image-steps and --max-images at least 1.")
    for d in args.allow_dir:
        if not os.path.isdir(d):
            raise StartupError(f"--allow-dir {d!r} is not a directory: create it or fix the path.")
    settings.image_output_dir = args.output_dir
    settings.allowed_image_dirs = [os.path.abspath(d) for d in args.allow_dir]
    settings.max_image_size, settings.max_image_steps, settings.max_images_n = (
        args.max_image_size,
        args.max_image_steps,
        args.max_images,
    )
    if args.max_upload_mb <= 0 or args.whisper_batch_size < 0:
        raise StartupError("--max-upload-mb must be above 0 and --whisper-batch-size at least 0.")
    settings.max_upload_mb = args.max_upload_mb
    settings.whisper_compute_type = args.compute_type
    settings.whisper_batch_size = args.whisper_batch_size
    # Vision chat: --allow-dir above also lets file:// image URLs read inside those directories.
    if args.projector and not os.path.isfile(args.projector):
        raise StartupError(f"--projector {args.projector!r} is not a file: give the path of the mmproj GGUF.")
    if args.max_image_mb <= 0 or args.max_chat_images < 1:
        raise StartupError("--max-image-mb must be above 0 and --max-chat-images at least 1.")
    try:
        from nexa.server.image_input import parse_allowed_hosts

        parse_allowed_hosts(args.allow_image_host)
    except ValueError as exc:
        raise StartupError(f"--allow-image-host: {exc}.") from None
    settings.projector = os.path.abspath(args.projector) if args.projector else None
    settings.remote_images = not args.no_remote_images
    settings.allowed_image_hosts = list(args.allow_image_host)
    settings.max_image_bytes = int(args.max_image_mb * 2**20)
    settings.max_chat_images = args.max_chat_images
    return settings


def check_port(host: str, port: int) -> None:
    """Fail before loading a model (which can take minutes) if the port is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise StartupError(
            f"Cannot resolve --host {host!r}: {exc.strerror}. Use an address such as 127.0.0.1 or 0.0.0.0."
        ) from exc
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"Port {port} on {host} is already in use: stop the other server or choose another with --port."
                ) from exc
            raise StartupError(f"Cannot listen on {host}:{port}: {exc.strerror}.") from exc


def serve(settings: Settings) -> None:
    import uvicorn

    from nexa.models.manager import ModelManager, resolve_model
    from nexa.models.store import ModelStore
    from nexa.server.app import create_app

    if settings.onnx and settings.projector:
        raise StartupError("--projector is for GGUF vision models; the ONNX variant has no vision engine: drop one.")
    check_port(settings.host, settings.port)
    # `onnx MODEL`: the ONNX catalogue and whole-folder downloads; the manager then picks the
    # onnxruntime engine that fits the folder (nexa.engines.onnx).
    model = resolve_model(settings, ModelStore(onnx=settings.onnx))
    common = dict(
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    if settings.reload:
        # uvicorn can only reload an import string; the child rebuilds the settings from the
        # environment and resolves the same model again, from the cache this call just filled.
        os.environ[SETTINGS_ENV] = settings.to_env()
        src_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        uvicorn.run("nexa.server.app:app_from_env", factory=True, reload=True, reload_dirs=[src_dir], **common)  # type: ignore[arg-type]
        return
    app = create_app(settings, ModelManager.load(model, settings))
    uvicorn.run(app, **common)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", "info").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.command == "server":
            serve(settings_from_args(args))
        elif args.command == "pull":
            from nexa.models.store import ModelStore

            source = _source(args)
            model = ModelStore().pull(args.model_path, source=source, model_type=_model_type(args, source))
            print(f"{model.name}: {model.path}")
        elif args.command == "list":
            from nexa.models.store import ModelStore

            entries = ModelStore().list()
            if not entries:
                print("No models cached yet. Get one with `nexa pull NAME`.")
            for e in entries:
                print(f"{e['name']:<48} {e['run_type']:<15} {e['size'] / 1e6:>9.1f} MB  {e['location']}")
        elif args.command == "remove":
            from nexa.models.store import ModelStore

            for path in ModelStore().remove(args.model_path):
                print(f"removed {path}")
    except StartupError as exc:
        print(f"nexa: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
