"""`-hf REPO[:FILE|:QUANT]` and `-ms ...`: a hub repository, and the rules that choose which of its
files to fetch (shared with catalogue entries, which name a repository too)."""

from __future__ import annotations

import logging
import re

from nexa.errors import StartupError
from nexa.models import download as dl
from nexa.models.catalogue import DIFFUSION_EXTS, GGUF_EXTS, choose_model_file, choose_projector
from nexa.models.hubs import Hub
from nexa.models.registry import Fetched, Registry, RegistryEntry
from nexa.models.types import ModelType, ResolvedModel

log = logging.getLogger("nexa.store")

_REPO_RE = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # also keeps paths inside hub/


def resolve_repo(
    hub: Hub, registry: Registry, ref: str | None, model_type: ModelType | None, *, download: bool, onnx: bool
) -> ResolvedModel:
    if not ref:
        raise StartupError(f"{hub.flag} needs a repository id, e.g. {hub.flag} org/Model-GGUF")
    if model_type is None:
        log.info("No -mt given for %s %s; treating it as NLP (pass -mt to change)", hub.flag, ref)
        model_type = ModelType.NLP
    repo, sep, selector = ref.partition(":")
    if not _REPO_RE.fullmatch(repo) or ".." in repo or (sep and not selector):
        raise StartupError(f"Bad repository reference {ref!r}: use ORG/REPO, ORG/REPO:FILE or ORG/REPO:QUANT")
    prefix = "onnx:" if onnx else ""
    ref_key = f"{prefix}{hub.source}:{ref}"
    cached = registry.cached(ref_key, model_type)
    if cached is not None:
        return cached[1].to_model(cached[0], None)
    if not download:
        raise StartupError(f"{ref} is not downloaded yet: run `nexa pull {hub.flag} {ref}` or allow downloads")
    try:
        if onnx:
            fetched = fetch_onnx(hub, repo, selector or None)
        elif model_type == ModelType.AUDIO:
            fetched = fetch_folder(hub, repo, model_type)
        else:
            fetched = fetch_model_files(
                hub, repo, file=None, selector=selector or None, projector=None, model_type=model_type
            )
    except dl.DownloadError as e:
        raise StartupError(f"Could not get {ref} from {hub.title}: {e}") from e
    prefix += "ms:" if hub.source == "ms" else ""
    default_name = prefix + (f"{repo}:{fetched.file}" if fetched.file else repo)
    name, entry = registry.register(default_name, ref_key, RegistryEntry.from_files(fetched, model_type))
    return entry.to_model(name, None)


def fetch_model_files(
    hub: Hub,
    repo: str,
    *,
    file: str | None,
    selector: str | None,
    projector: str | None,
    model_type: ModelType,
) -> Fetched:
    """Choose the model (and projector) file of a repository and download them."""
    multimodal = model_type == ModelType.MULTIMODAL
    hub.check_reachable()
    sizes: dict[str, int] = {}
    if file is None or (multimodal and projector is None):
        # Only list when a choice has to be made: a pinned catalogue file needs no listing.
        sizes = hub.list_files(repo)
    if file is None:
        exts = DIFFUSION_EXTS if model_type == ModelType.COMPUTER_VISION else GGUF_EXTS
        file, why = choose_model_file(list(sizes), selector=selector, sizes=sizes, exts=exts)
        if file is None:
            shown = ", ".join(sorted(sizes)[:8]) + (", ..." if len(sizes) > 8 else "")
            raise dl.DownloadError(
                f"{repo} has no usable model file ({why}; files: {shown or 'none'})."
                f" Use {hub.flag} {repo}:FILE, or a repository with GGUF files"
            )
        log.info(
            "Using %s from %s (%s); pick another with %s %s:FILE or %s %s:QUANT",
            file,
            repo,
            why,
            hub.flag,
            repo,
            hub.flag,
            repo,
        )
    proj_file: str | None = None
    if multimodal:
        proj_file = projector or choose_projector(list(sizes))
        if proj_file is None:
            raise dl.DownloadError(f"{repo} has no vision projector (mmproj*.gguf) for -mt MULTIMODAL")
        log.info("Using projector %s from %s", proj_file, repo)
    path = hub.download(repo, file, sizes.get(file))
    proj_path = hub.download(repo, proj_file, sizes.get(proj_file)) if proj_file else None
    return Fetched(path=path, source=hub.source, projector=proj_path, file=file)


def fetch_folder(hub: Hub, repo: str, model_type: ModelType) -> Fetched:
    """A repository that is one model as a whole (CTranslate2 for faster-whisper)."""
    hub.check_reachable()
    folder = hub.download_all(repo)
    if model_type == ModelType.AUDIO:
        dl.check_ct2_folder(folder, repo)
    return Fetched(path=folder, source=hub.source)


def fetch_onnx(hub: Hub, repo: str, selector: str | None) -> Fetched:
    """One ONNX model's files: a genai build folder (repositories hold several), or an encoder
    graph with its tokenizer and pooling config; never the repository's other weights."""
    from nexa.engines.onnx.layout import choose_repo_files  # pure Python, no onnxruntime

    hub.check_reachable()
    sizes = hub.list_files(repo)
    try:
        folder, files = choose_repo_files(list(sizes), selector)
    except ValueError as e:
        raise dl.DownloadError(f"{repo} holds no ONNX model this server runs: {e}") from None
    log.info("Using %s of %s (%d files); pick another with REPO:FOLDER", folder or "the top", repo, len(files))
    hub.download_all(repo, {f: sizes.get(f, 0) for f in files})
    local = hub.local_dir(repo)
    return Fetched(path=dl.inside(local, folder) if folder else local, source=hub.source, file=folder or None)
