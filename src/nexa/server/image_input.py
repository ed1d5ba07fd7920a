"""Images of chat messages (`image_url` parts): fetch or read them, then decode them, off the loop.

A URL may be a `data:image/...;base64,` URI, bare base64, an `http(s)://` URL, or (only where
the operator allowed a directory) a `file://` URL or a path. The rules:
- Remote fetching can be turned off (`--no-remote-images`). When on, only http and https are
  fetched, with one deadline for the whole fetch, a byte cap, and a bounded number of redirects.
- Every hop (the first URL and each redirect) is resolved here, each address is checked, and the
  connection goes to the checked address itself (the Host header and TLS name stay the URL's):
  a DNS answer that changes between the check and the connect cannot reach somewhere else.
  Private, loopback, link-local, multicast and reserved addresses are refused unless the
  operator allowed the host or network (`--allow-image-host`).
- Local files only inside the operator's directories (`--allow-dir`, none by default), never
  through `..` or a symbolic link out of them.
- Pillow decodes everything it knows (PNG, JPEG, WebP, GIF, BMP, ...) in a worker thread into
  plain RGB pixels, so the engine never sees a format it cannot read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import ipaddress
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import httpx

from nexa.config import Settings, default
from nexa.errors import InvalidRequest
from nexa.server.files import image_too_large, read_allowed_file
from nexa.server.threads import Pool

log = logging.getLogger("nexa.images.input")

MAX_PIXELS = 4096 * 4096  # decoded size; refuses decompression bombs before the pixels are read
_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class InputImage:
    """Decoded pixels, ready for a vision engine: RGB, 3 bytes a pixel, row by row."""

    rgb: bytes
    width: int
    height: int
    digest: str  # sha256 of the encoded bytes: the same picture sent again is recognised


@dataclass
class ImagePolicy:
    """What the operator allows (from Settings)."""

    remote: bool = default("remote_images")
    allowed_hosts: frozenset[str] = frozenset()  # host names allowed despite resolving privately
    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_dirs: Sequence[str] = field(default_factory=list)
    max_bytes: int = default("max_image_bytes")
    timeout_s: float = default("image_fetch_timeout_s")
    max_redirects: int = default("max_image_redirects")

    @classmethod
    def from_settings(cls, settings: Settings) -> ImagePolicy:
        hosts, networks = parse_allowed_hosts(settings.allowed_image_hosts)
        return cls(
            remote=settings.remote_images,
            allowed_hosts=hosts,
            allowed_networks=networks,
            allowed_dirs=list(settings.allowed_image_dirs),
            max_bytes=settings.max_image_bytes,
            timeout_s=settings.image_fetch_timeout_s,
            max_redirects=settings.max_image_redirects,
        )


def parse_allowed_hosts(entries: Sequence[str]) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    """`--allow-image-host` values: an address or network (127.0.0.1, 10.0.0.0/8, ::1) or a host name."""
    hosts: set[str] = set()
    networks: list[IPNetwork] = []
    for entry in entries:
        text = entry.strip()
        try:
            networks.append(ipaddress.ip_network(text.strip("[]"), strict=False))
        except ValueError:
            if not text or any(c in text for c in "/:@ "):
                raise ValueError(f"{entry!r} is neither an address, a network (10.0.0.0/8) nor a host name") from None
            hosts.add(text.lower().rstrip("."))
    return frozenset(hosts), tuple(networks)


async def load_images(urls: Sequence[tuple[str, str]], policy: ImagePolicy, pool: Pool) -> list[InputImage]:
    """Load and decode (url, param) pairs concurrently, in order; the first failure is the answer
    and stops the other fetches. Reading and decoding take turns in `pool` with other requests'."""
    tasks = [asyncio.ensure_future(load_image(url, policy, param, pool)) for url, param in urls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


async def load_image(url: str, policy: ImagePolicy, param: str, pool: Pool) -> InputImage:
    text = url.strip()
    lower = text[:16].lower()
    if lower.startswith("data:"):
        return await pool.run(_decode_data_uri, text, policy.max_bytes, param)
    if lower.startswith(("http://", "https://")):
        data = await fetch_remote(text, policy, param)
        return await pool.run(decode_image, data, param)
    if lower.startswith("file://"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise InvalidRequest("A file:// URL must name a file on this server (file:///path).", param=param)
        return await pool.run(_read_and_decode, unquote(parts.path), policy, param)
    if "://" in text[:24]:
        scheme = text.split("://", 1)[0]
        raise InvalidRequest(
            f"Image URLs with the scheme {scheme!r} are not supported: use https://, a data URI "
            "(data:image/png;base64,...) or base64.",
            param=param,
        )
    if _looks_like_base64(text):
        return await pool.run(_decode_base64, text, policy.max_bytes, param)
    return await pool.run(_read_and_decode, text, policy, param)


# -- inline images ------------------------------------------------------------------------------


def _looks_like_base64(text: str) -> bool:
    # A path such as /srv/a.png has a '.', which base64 lacks; JPEG's base64 starts with "/9j/",
    # so a leading slash alone does not make a path.
    compact = "".join(text.split()).encode("ascii", "replace")
    return len(compact) >= 16 and all(c in _B64_ALPHABET for c in compact)


def _decode_data_uri(text: str, max_bytes: int, param: str) -> InputImage:
    header, sep, payload = text.partition(",")
    if not sep or ";base64" not in header.lower():
        raise InvalidRequest("An image data URI must be base64 encoded: data:image/png;base64,....", param=param)
    return _decode_base64(payload, max_bytes, param)


def _decode_base64(text: str, max_bytes: int, param: str) -> InputImage:
    compact = "".join(text.split())
    if len(compact) * 3 // 4 > max_bytes + 3:
        raise image_too_large(max_bytes, param)
    try:
        # Both alphabets: standard and URL-safe base64 are both common in the wild.
        alt = b"-_" if ("-" in compact or "_" in compact) else None
        data = base64.b64decode(compact + "=" * (-len(compact) % 4), altchars=alt, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("The image is not valid base64 (send base64 or a data URI).", param=param) from None
    return decode_image(data, param)


# -- local files --------------------------------------------------------------------------------


def _read_and_decode(raw: str, policy: ImagePolicy, param: str) -> InputImage:
    data = read_allowed_file(
        raw,
        policy.allowed_dirs,
        param,
        max_bytes=policy.max_bytes,
        instead="send the image as base64, a data URI or an https URL",
    )
    return decode_image(data, param)


# -- remote URLs --------------------------------------------------------------------------------


def address_allowed(ip: IPAddress, policy: ImagePolicy) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(ip in net for net in policy.allowed_networks):
        return True
    # is_global is False for private, loopback, link-local, shared (100.64/10), reserved and
    # unspecified addresses; multicast is refused as well.
    return ip.is_global and not ip.is_multicast


async def _resolve(host: str, port: int, policy: ImagePolicy, param: str) -> str:
    """The address to connect to for `host`: the first one the policy allows."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise InvalidRequest(f"Cannot fetch the image: the host {host!r} does not resolve.", param=param) from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    name_allowed = host.lower().rstrip(".") in policy.allowed_hosts
    for ip in addresses:
        if name_allowed or address_allowed(ip, policy):
            return str(ip)
    raise InvalidRequest(
        f"Refusing to fetch the image from {host} ({addresses[0]}): it is a private, loopback or link-local "
        "address. Send the image as base64 instead, or start the server with --allow-image-host to allow "
        "that host or network.",
        param=param,
    )


async def fetch_remote(url: str, policy: ImagePolicy, param: str) -> bytes:
    """GET an http(s) image under the policy: one deadline for the whole fetch, redirects included."""
    if not policy.remote:
        raise InvalidRequest(
            "This server does not fetch remote images (--no-remote-images): send the image as base64 or a data URI.",
            param=param,
        )
    try:
        return await asyncio.wait_for(_fetch(url, policy, param), timeout=policy.timeout_s)
    except asyncio.TimeoutError:
        raise InvalidRequest(
            f"Fetching the image took longer than {policy.timeout_s:g} s: send it as base64 instead.", param=param
        ) from None


async def _fetch(url: str, policy: ImagePolicy, param: str) -> bytes:
    # trust_env=False: an HTTP(S)_PROXY from the environment would connect on our behalf to
    # addresses we never checked.
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=policy.timeout_s) as client:
        for _hop in range(policy.max_redirects + 1):
            try:
                target = httpx.URL(url)
            except httpx.InvalidURL:
                raise InvalidRequest("The image URL is not a valid URL.", param=param) from None
            if target.scheme not in ("http", "https") or not target.host:
                raise InvalidRequest("Only http:// and https:// image URLs are fetched.", param=param)
            port = target.port or (443 if target.scheme == "https" else 80)
            address = await _resolve(target.host, port, policy, param)
            # Connect to the checked address; the server still sees the URL's host name, and
            # TLS checks the certificate against it (sni_hostname).
            direct = target.copy_with(host=address, username=None, password=None)
            host_header = target.host if target.port is None else f"{target.host}:{target.port}"
            if ":" in target.host:  # an IPv6 literal
                host_header = f"[{target.host}]" + ("" if target.port is None else f":{target.port}")
            extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
            try:
                async with client.stream(
                    "GET", direct, headers={"Host": host_header, "Accept": "image/*"}, extensions=extensions
                ) as response:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise InvalidRequest("The image URL redirected without a Location.", param=param)
                        url = str(target.join(location))
                        continue
                    if response.status_code != 200:
                        raise InvalidRequest(
                            f"Fetching the image failed: the server answered HTTP {response.status_code}.",
                            param=param,
                        )
                    return await _read_capped(response, policy.max_bytes, param)
            except httpx.HTTPError as exc:
                reason = f"{exc.__class__.__name__}: {exc}"
                raise InvalidRequest(f"Fetching the image failed: {reason}", param=param) from None
        raise InvalidRequest(f"The image URL redirected more than {policy.max_redirects} times.", param=param)


async def _read_capped(response: httpx.Response, max_bytes: int, param: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise image_too_large(max_bytes, param)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:  # a missing or lying Content-Length is caught here
            raise image_too_large(max_bytes, param)
        chunks.append(chunk)
    return b"".join(chunks)


# -- decoding -----------------------------------------------------------------------------------


def decode_image(data: bytes, param: str) -> InputImage:
    """Any format Pillow reads -> RGB pixels (transparency over white, EXIF rotation applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        opened = Image.open(io.BytesIO(data))
        if opened.width * opened.height > MAX_PIXELS:
            raise InvalidRequest(
                f"The image is {opened.width}x{opened.height} pixels; send at most 4096x4096.", param=param
            )
        opened.load()
        image: Image.Image = ImageOps.exif_transpose(opened)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)
        rgb = image.convert("RGB")
    except InvalidRequest:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise InvalidRequest(
            "The image could not be decoded: send a PNG, JPEG, WebP, GIF or BMP file.", param=param
        ) from None
    return InputImage(rgb.tobytes(), rgb.width, rgb.height, hashlib.sha256(data).hexdigest())
