"""Deleting downloaded files (`nexa remove`, stale registry entries) without leaving debris:
huggingface_hub's per-file metadata goes with its file, and folders left empty go too."""

from __future__ import annotations

import shutil
from pathlib import Path

from nexa.models import download as dl


def delete_files(hub: Path, targets: list[Path]) -> list[Path]:
    """Delete each target file or folder under the store's `hub/` folder; returns those that existed."""
    removed: list[Path] = []
    for target in targets:
        if target.is_dir():
            shutil.rmtree(target)
            removed.append(target)
        elif target.exists():
            target.unlink()
            removed.append(target)
        forget_hf_metadata(hub, target)
    _prune_empty_dirs(hub, targets)
    return removed


def forget_hf_metadata(hub: Path, path: Path) -> None:
    """huggingface_hub keeps per-file metadata under {local_dir}/.cache; drop ours with the file."""
    local_dir = _hf_local_dir(hub, path)
    if local_dir is None:
        return
    rel = path.resolve().relative_to(local_dir)
    meta = local_dir / ".cache" / "huggingface" / "download" / rel
    for suffix in (".metadata", ".lock"):
        meta.with_name(meta.name + suffix).unlink(missing_ok=True)


def _hf_local_dir(hub: Path, path: Path) -> Path | None:
    """The huggingface/{org}/{repo} folder a file was downloaded into, if it was."""
    hf_root = (hub / "huggingface").resolve()
    try:
        parts = path.resolve().relative_to(hf_root).parts
    except ValueError:
        return None
    return hf_root.joinpath(*parts[:2]) if len(parts) >= 3 else None


def _prune_empty_dirs(hub: Path, targets: list[Path]) -> None:
    """Remove folders left empty (and repo folders holding only hub bookkeeping) up to hub/."""
    hub = hub.resolve()
    for target in targets:
        local_dir = _hf_local_dir(hub, target)
        if local_dir is not None and local_dir.is_dir() and not any(dl.iter_files(local_dir)):
            shutil.rmtree(local_dir)
        parent = target.resolve().parent
        while parent != hub and parent.is_relative_to(hub):
            if parent.is_dir():
                if any(parent.iterdir()):
                    break
                parent.rmdir()
            parent = parent.parent
