"""The two model hubs, one class each with the same four operations: check that the hub answers,
list a repository, download one file, download a set of files (or the whole repository).

Files land in hub/{huggingface,modelscope}/{org}/{repo}/ under the cache (the original's layout).
Hugging Face goes through huggingface_hub (it resumes and verifies); ModelScope through our own
resumable downloader (download.py). Every failure is a one-line `DownloadError`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from nexa.models import download as dl
from nexa.models import progress

DEFAULT_MODELSCOPE_ENDPOINT = "https://www.modelscope.cn"


class Hub(ABC):
    source: ClassVar[str]  # the registry's `source` and the ref-key prefix: "hf" or "ms"
    flag: ClassVar[str]  # the CLI flag that names a repository on it
    title: ClassVar[str]
    folder: ClassVar[str]  # under hub/

    def __init__(self, cache: Path):
        self.cache = cache  # the store's hub/ folder

    def local_dir(self, repo: str) -> Path:
        return self.cache / self.folder / repo

    @abstractmethod
    def check_reachable(self) -> None:
        """Fail fast, before any listing or download, when the hub cannot be reached at all."""

    @abstractmethod
    def list_files(self, repo: str) -> dict[str, int]:
        """{path: size} of every file in the repository."""

    @abstractmethod
    def download(self, repo: str, file: str, size: int | None) -> Path:
        """One file into the repository's local folder; `size` (from a listing) is checked when known."""

    @abstractmethod
    def download_all(self, repo: str, files: dict[str, int] | None = None) -> Path:
        """`files` (as listed: {path: size}), or with None the whole repository; returns its folder."""


class HuggingFace(Hub):
    source, flag, title, folder = "hf", "-hf", "Hugging Face", "huggingface"

    def check_reachable(self) -> None:
        """huggingface_hub retries a failed connection for about half a minute before giving up;
        one quick request of our own turns "offline" into a clear error at once. Any HTTP answer
        counts."""
        endpoint = _hf_args()["endpoint"] or "https://huggingface.co"
        try:
            with dl.make_client() as client:
                client.head(endpoint, timeout=httpx.Timeout(dl.CONNECT_TIMEOUT_S))
        except httpx.TransportError as e:
            raise dl.DownloadError(
                f"cannot reach Hugging Face at {endpoint} ({dl.one_line(e)}); set HF_ENDPOINT for a mirror"
            ) from e

    def list_files(self, repo: str) -> dict[str, int]:
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile

        args = _hf_args()
        try:
            api = HfApi(endpoint=args["endpoint"], token=args["token"])
            tree = api.list_repo_tree(repo, recursive=True)
            return {f.path: int(f.size or 0) for f in tree if isinstance(f, RepoFile)}
        except Exception as e:  # noqa: BLE001 - library/transport errors become one line
            raise _hf_error(repo, e, "listing") from e

    def download(self, repo: str, file: str, size: int | None) -> Path:
        """huggingface_hub resumes, checks and shows progress itself; `size` is not needed."""
        from huggingface_hub import hf_hub_download

        try:
            bar = _hub_bar()
            return Path(hf_hub_download(repo, file, local_dir=self.local_dir(repo), tqdm_class=bar, **_hf_args()))
        except Exception as e:  # noqa: BLE001
            raise _hf_error(repo, e, file) from e

    def download_all(self, repo: str, files: dict[str, int] | None = None) -> Path:
        from huggingface_hub import snapshot_download

        patterns = list(files) if files is not None else None
        try:
            folder = snapshot_download(
                repo, local_dir=self.local_dir(repo), allow_patterns=patterns, tqdm_class=_hub_bar(), **_hf_args()
            )
        except Exception as e:  # noqa: BLE001
            raise _hf_error(repo, e, "snapshot") from e
        return Path(folder)


def _hub_bar() -> type:
    """huggingface_hub's own progress bar (it honours HF_HUB_DISABLE_PROGRESS_BARS), also reporting
    to the download it was made for (progress.py). The download is taken when the bar is made (the
    library may update it from its own threads), and the count is kept here because a disabled bar
    counts nothing."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class HubBar(hf_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._download = progress.current()
            self._done = float(kwargs.get("initial") or 0)
            self._bytes = kwargs.get("unit") == "B"
            self._name = str(kwargs.get("desc") or f"bar {id(self)}")
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            self._done += n or 0
            if self._download is not None:
                progress.BOARD.report(self._download, self._name, self._done, self.total, self._bytes)
            return super().update(n)

    return HubBar


def _hf_args() -> dict[str, Any]:
    """Endpoint and token read now, not at import: huggingface_hub freezes HF_ENDPOINT on import."""
    endpoint = os.environ.get("HF_ENDPOINT") or None
    return {"endpoint": endpoint.rstrip("/") if endpoint else None, "token": os.environ.get("HF_TOKEN") or None}


def _hf_error(repo: str, e: Exception, what: str) -> dl.DownloadError:
    from huggingface_hub import errors

    if isinstance(e, errors.LocalEntryNotFoundError):  # hub unreachable and nothing cached
        cause = e.__cause__ or e
        return dl.DownloadError(f"cannot reach Hugging Face for {repo}: {dl.one_line(cause)}")
    if isinstance(e, errors.GatedRepoError):
        return dl.DownloadError(f"{repo} is gated: accept its terms on the hub and set HF_TOKEN")
    if isinstance(e, errors.RepositoryNotFoundError):
        return dl.DownloadError(f"Hugging Face repository {repo!r} not found (or private: set HF_TOKEN)")
    if isinstance(e, errors.RevisionNotFoundError):
        return dl.DownloadError(f"{repo} has no main branch")
    if isinstance(e, errors.EntryNotFoundError):
        return dl.DownloadError(f"{repo} has no file {what}")
    return dl.DownloadError(f"Hugging Face {what} of {repo} failed: {dl.one_line(e)}")


class ModelScope(Hub):
    source, flag, title, folder = "ms", "-ms", "ModelScope", "modelscope"

    def check_reachable(self) -> None:
        """Nothing to do: our own client fails at once on a dead connection, with its own message."""

    def list_files(self, repo: str) -> dict[str, int]:
        """Every file of the repository's master branch."""
        url = f"{modelscope_endpoint()}/api/v1/models/{repo}/repo/files"
        try:
            with dl.make_client() as client:
                resp = client.get(url, params={"Revision": "master", "Recursive": "true"})
        except httpx.TransportError as e:
            raise dl.DownloadError(f"cannot reach ModelScope at {modelscope_endpoint()}: {dl.one_line(e)}") from e
        if resp.status_code == 404:
            raise dl.DownloadError(f"ModelScope repository {repo!r} not found")
        if resp.status_code >= 400:
            raise dl.DownloadError(f"ModelScope answered HTTP {resp.status_code} listing {repo}")
        try:
            files = resp.json()["Data"]["Files"]
        except (ValueError, KeyError, TypeError):
            raise dl.DownloadError(f"ModelScope gave no file list for {repo!r} (is the repository id right?)") from None
        return {f["Path"]: int(f.get("Size") or 0) for f in files if f.get("Type", "blob") == "blob"}

    def download(self, repo: str, file: str, size: int | None) -> Path:
        dest = dl.inside(self.local_dir(repo), file)
        return dl.download_file(ms_file_url(repo, file), dest, size=size or None, desc=f"{repo}/{file}")

    def download_all(self, repo: str, files: dict[str, int] | None = None) -> Path:
        for path, size in (self.list_files(repo) if files is None else files).items():
            self.download(repo, path, size)
        return self.local_dir(repo)


def modelscope_endpoint() -> str:
    return os.environ.get("MODELSCOPE_ENDPOINT", DEFAULT_MODELSCOPE_ENDPOINT).rstrip("/")


def ms_file_url(repo: str, path: str) -> str:
    return f"{modelscope_endpoint()}/api/v1/models/{repo}/repo?Revision=master&FilePath={quote(path, safe='/')}"


HUBS: dict[str, type[Hub]] = {"hf": HuggingFace, "ms": ModelScope}
