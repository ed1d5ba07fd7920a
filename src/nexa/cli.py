"""`nexa server | serve-ray | pull | list | remove | gpu`: flags -> Settings -> store -> app -> uvicorn.

The `nexa server` flags are generated from the Settings fields (config.py: each field's Flag,
description, default and range), so a new setting is one field there. No prompt ever waits on
stdin; a user mistake prints one line saying what to do and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
import types
from collections.abc import Sequence
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from nexa import __version__
from nexa.config import SETTINGS_ENV, Flag, Settings, cli_flag, env_name
from nexa.errors import StartupError
from nexa.models.types import ModelType

log = logging.getLogger("nexa")


def _add_source_flags(p: argparse.ArgumentParser, what: str = "MODEL is") -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("-lp", "--local_path", action="store_true", help=f"{what} a local file or folder")
    src.add_argument(
        "-hf", "--huggingface", action="store_true", help=f"{what} a Hugging Face repo (repo, repo:FILE or repo:QUANT)"
    )
    src.add_argument(
        "-ms", "--modelscope", action="store_true", help=f"{what} a ModelScope repo (repo, repo:FILE or repo:QUANT)"
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
    _add_server_arguments(s)
    r = sub.add_parser(
        "serve-ray",
        help="serve the same API from replicas on Ray Serve, routed by model and prompt (pip install 'nexa[ray]')",
        description="Deploy `nexa server` as a Ray Serve application: --replicas copies, each with --threads CPUs "
        "and at most --max-models models loaded (those its requests name), behind Ray Serve's HTTP proxy on "
        "--host/--port. Takes every `nexa server` option. Ctrl-C deletes the application.",
    )
    _add_server_arguments(r)
    r.add_argument("--ray-address", metavar="ADDRESS", default=None,
                   help="the Ray cluster to deploy on (default: RAY_ADDRESS, else a local Ray started now)")
    r.add_argument("--replicas", type=int, default=1, metavar="N", help="replicas (default: 1; the least with "
                   "--max-replicas)")
    r.add_argument("--max-replicas", type=int, default=None, metavar="N",
                   help="let Ray Serve autoscale between --replicas and N by the requests in flight")
    r.add_argument("--no-prefix-routing", dest="prefix_routing", action="store_false",
                   help="route chats like any request (the less loaded of two replicas), not by their prompt's start")

    p = sub.add_parser("pull", help="download a model into the cache")
    p.add_argument("model_path")
    _add_source_flags(p)
    sub.add_parser("list", help="list cached models")
    r = sub.add_parser("remove", help="delete a cached model")
    r.add_argument("model_path")
    sub.add_parser("gpu", help="say what this install can run on a GPU, and what -ngl auto would do")
    return parser


def _add_server_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="catalogue name, Name:tag, path (-lp) or repo (-hf/-ms); default: SmolLM2-135M-Instruct. "
        "Several models are served together, the first being the default; all are loaded at start "
        "(as far as --max-models/--max-memory allow) and stay loaded; with -lp and no -mt the ones after "
        "the first get their type from their files. "
        "Write `onnx MODEL...` for the ONNX Runtime variant.",
    )
    _add_source_flags(s, "every MODEL is")
    for name, info in Settings.model_fields.items():
        flag = cli_flag(name)
        if flag is not None:
            s.add_argument(*flag.names, **_flag_options(name, info, flag))


def _value_type(info: FieldInfo) -> Any:
    """The field's type without None: `int | None` -> int."""
    kind = info.annotation
    if get_origin(kind) in (Union, types.UnionType):
        kind = next(a for a in get_args(kind) if a is not type(None))
    return kind


def _flag_options(name: str, info: FieldInfo, flag: Flag) -> dict[str, Any]:
    """add_argument's options for a field. No argparse default: a flag left out leaves the field
    to its NEXA_* variable or its default, which the help shows."""
    kind = _value_type(info)
    options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
    notes = []
    if kind is bool:
        options["action"] = "store_false" if info.default else "store_true"
        variable = f"{env_name(name)}={str(not info.default).lower()}"
    else:
        variable = env_name(name)
        if get_origin(kind) is list:
            options["action"] = "append"
            notes.append("repeatable")
            (kind,) = get_args(kind)
        if get_origin(kind) is Literal:
            options["choices"] = list(get_args(kind))
            kind = str
        else:  # named after the flag, as argparse would name it: NCTX, MAX_IMAGE_MB
            options["metavar"] = flag.metavar or flag.names[0].lstrip("-").replace("-", "_").upper()
        options["type"] = str if flag.text else float if flag.scale != 1 else kind
        shown = flag.shown_default or _shown(info.get_default(call_default_factory=True), flag.scale)
        if shown:
            notes.append(f"default: {shown}")
    notes.append(variable)
    options["help"] = f"{flag.help or info.description} ({'; '.join(notes)})"
    return options


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _shown(value: Any, scale: int) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return ", ".join(value) or "none"
    if isinstance(value, (int, float)):
        return _number(value / scale)
    return str(value)


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


def _model_values(args: argparse.Namespace) -> dict[str, Any]:
    """The model fields from `[onnx] MODEL...`, -lp/-hf/-ms and -mt, where given."""
    values: dict[str, Any] = {}
    models = list(args.models)
    if models[:1] == ["onnx"]:
        values["onnx"], models = True, models[1:]
        if not models:
            raise StartupError("`nexa server onnx` needs a model: nexa server onnx MODEL")
    if models:
        values["model"], more = models[0], models[1:]
        if more:
            values["models"] = more
    source = _source(args)
    if source != "auto":
        values["source"] = source
    if args.model_type:
        values["model_type"] = args.model_type
    return values


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags over NEXA_* variables over defaults; a bad value is one StartupError naming its flag."""
    values, typed = _model_values(args), {}
    for name in Settings.model_fields:
        flag = cli_flag(name)
        if flag is not None and hasattr(args, name):
            typed[name] = value = getattr(args, name)
            values[name] = int(value * flag.scale) if flag.scale != 1 else value
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        raise StartupError("; ".join(_problem(error, typed) for error in exc.errors()) + ".") from None
    _model_type(args, settings.source)
    _check_paths_and_hosts(settings)
    if settings.models_dir and not os.path.isdir(settings.models_dir):
        raise StartupError(f"--models-dir {settings.models_dir!r} is not a directory: create it or fix the path.")
    _check_access(settings)
    return settings


_RANGE_ERRORS = {"greater_than_equal", "greater_than", "less_than_equal", "less_than"}


def _problem(error: Any, typed: dict[str, Any]) -> str:
    """One validation error in the user's terms: the flag (or variable) they set, in its unit."""
    name = str(error["loc"][0]) if error["loc"] else ""
    flag = cli_flag(name) if name in Settings.model_fields else None
    if flag is not None and name in typed:
        who, got, scale = flag.names[0], typed[name], flag.scale
    else:
        who, got, scale = env_name(name), error["input"], 1
    if error["type"] in _RANGE_ERRORS:
        return f"{who} must be {_range(name, scale)} (got {_number(got) if isinstance(got, (int, float)) else got})"
    return f"{who}: {error['msg']} (got {got!r})"


def _range(name: str, scale: int) -> str:
    """The field's bounds in the flag's unit: "at least 16", "between 1 and 65535"."""
    bounds: list[tuple[str, Any]] = []  # lower bound first, as Field(ge=, le=) lists them
    for m in Settings.model_fields[name].metadata:
        if isinstance(m, annotated_types.Ge):
            bounds.append(("at least", m.ge))
        elif isinstance(m, annotated_types.Gt):
            bounds.append(("above", m.gt))
        elif isinstance(m, annotated_types.Le):
            bounds.append(("at most", m.le))
    shown = [(word, _number(bound / scale)) for word, bound in bounds]
    if len(shown) == 2:
        return f"between {shown[0][1]} and {shown[1][1]}"
    return " ".join(shown[0])


def _check_paths_and_hosts(settings: Settings) -> None:
    """What only the machine can say: directories and files exist, host names are names."""
    for d in settings.allowed_image_dirs:
        if not os.path.isdir(d):
            raise StartupError(f"--allow-dir {d!r} is not a directory: create it or fix the path.")
    # Vision chat: --allow-dir above also lets file:// image URLs read inside those directories.
    if settings.projector and not os.path.isfile(settings.projector):
        raise StartupError(f"--projector {settings.projector!r} is not a file: give the path of the mmproj GGUF.")
    try:
        from nexa.server.image_input import parse_allowed_hosts

        parse_allowed_hosts(settings.allowed_image_hosts)
    except ValueError as exc:
        raise StartupError(f"--allow-image-host: {exc}.") from None


def _check_access(settings: Settings) -> None:
    """Keys that can be used, and no server open to the network without one (LocalAI's rule)."""
    from nexa.server.security import api_keys, is_loopback

    try:
        keys = api_keys(settings)
    except OSError as exc:
        raise StartupError(f"--api-key-file {settings.api_key_file!r}: {exc.strerror}.") from None
    except ValueError as exc:
        raise StartupError(f"{exc}.") from None
    if settings.api_key_file and not keys:
        raise StartupError(f"--api-key-file {settings.api_key_file!r} holds no key: write one per line.")
    if not keys and not settings.insecure_public and not is_loopback(settings.host):
        raise StartupError(
            f"--host {settings.host} serves other machines, but no API key is set: add --api-key KEY "
            "(or --api-key-file, NEXA_API_KEY), bind 127.0.0.1, or pass --insecure-public to serve anyone."
        )


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

    from nexa.models.manager import ModelManager
    from nexa.models.startup import resolve_model
    from nexa.models.store import ModelStore
    from nexa.server.app import create_app

    if settings.onnx and settings.projector:
        raise StartupError("--projector is for GGUF vision models; the ONNX variant has no vision engine: drop one.")
    check_port(settings.host, settings.port)
    common = dict(
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    if settings.reload:
        # uvicorn can only reload an import string; the child rebuilds the settings from the
        # environment and resolves the same models again, from the cache these calls fill.
        # `onnx MODEL`: the ONNX catalogue and whole-folder downloads.
        store = ModelStore(onnx=settings.onnx)
        resolve_model(settings, store)
        for ref in settings.models:
            store.resolve(ref, source=settings.source, model_type=settings.model_type)
        os.environ[SETTINGS_ENV] = settings.to_env()
        src_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        uvicorn.run("nexa.server.app:app_from_env", factory=True, reload=True, reload_dirs=[src_dir], **common)  # type: ignore[arg-type]
        return
    app = create_app(settings, ModelManager.start(settings))
    uvicorn.run(app, **common)  # type: ignore[arg-type]


def serve_ray(args: argparse.Namespace) -> None:
    settings = settings_from_args(args)
    _log_to_stderr(settings.log_level)
    if args.replicas < 1 or (args.max_replicas is not None and args.max_replicas < args.replicas):
        raise StartupError("--replicas must be at least 1, and --max-replicas at least --replicas.")
    if settings.reload:
        raise StartupError("--reload is for `nexa server`; redeploy with `nexa serve-ray` instead.")
    try:
        from nexa.server.ray_app import RayOptions, run
    except ImportError as exc:
        raise StartupError(f"`nexa serve-ray` needs Ray Serve ({exc}): pip install 'nexa[ray]'.") from None
    run(settings, RayOptions(args.ray_address, args.replicas, args.max_replicas, args.prefix_routing))


def _log_to_stderr(level: str) -> None:
    log_format = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    logging.basicConfig(level=level.upper(), format=log_format, stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "server":
            settings = settings_from_args(args)
            _log_to_stderr(settings.log_level)
            serve(settings)
            return 0
        if args.command == "serve-ray":
            serve_ray(args)
            return 0
        _log_to_stderr("info")
        if args.command == "gpu":
            from nexa.gpu_check import main as gpu_main

            return gpu_main()
        if args.command == "pull":
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
