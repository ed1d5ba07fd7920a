"""Files the image endpoints read and write, kept inside the directories the operator chose.

- Generated images go into one output directory under names the server makes up, and only
  names of that shape are served back (`/v1/files/{name}`).
- `image_path` reads a server file only inside `allowed_image_dirs` (none by default): a path
  with `..`, or one that leaves those directories through a symbolic link, is refused.
- Input images arrive as base64, a data URI, an upload or such a path, and are size-checked
  before they are decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import stat
import uuid
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from nexa.config import Settings
from nexa.errors import InvalidRequest, NotFound, PayloadTooLarge

MAX_INPUT_PIXELS = 4096 * 4096  # an input image, decoded (refuses decompression bombs)
_NAME = re.compile(r"^[a-z0-9]+-[0-9a-f]{32}\.png$")


def output_dir(settings: Settings) -> Path:
    """Where generated images are written: --output-dir, else <cache root>/images."""
    if settings.image_output_dir:
        return Path(settings.image_output_dir).expanduser().resolve()
    from nexa.models.store import cache_root

    return (cache_root() / "images").resolve()


class ImageFiles:
    """The output directory: unique names in, only those names out."""

    def __init__(self, directory: Path):
        self.directory = directory

    def save_png(self, image: Image.Image, kind: str) -> tuple[str, bytes]:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        data = buf.getvalue()
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{kind}-{uuid.uuid4().hex}.png"
        # O_EXCL: never overwrite (or follow a link planted under) an existing name.
        fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return name, data

    def path(self, name: str) -> Path:
        """The file for a served name; anything that is not one of ours is a 404."""
        if not _NAME.match(name):
            raise NotFound(f"No image named {name!r} on this server.", param="name")
        path = self.directory / name
        try:
            info = path.lstat()
        except FileNotFoundError:
            raise NotFound(f"No image named {name!r} on this server (it may be deleted).", param="name") from None
        if not stat.S_ISREG(info.st_mode):  # a symbolic link or anything else planted there
            raise NotFound(f"No image named {name!r} on this server.", param="name")
        return path


def _within(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def read_allowed_file(
    raw: str,
    allowed_dirs: Sequence[str],
    param: str = "image_path",
    *,
    max_bytes: int,
    instead: str = "send the image itself (base64, a data URI or a multipart upload)",
) -> bytes:
    """Read `raw` if it lies inside an allowed directory, else a 400 that says why.

    The one gate for every client-named server file (img2img's image_path, chat image paths):
    `..` is refused, and a path that resolves (through symbolic links) outside the allowed
    directories is refused even when it is spelled inside them.
    """
    if not allowed_dirs:
        raise InvalidRequest(
            f"Reading images from server files is turned off: {instead}, or start the server with "
            "--allow-dir DIR to allow reading from DIR.",
            param=param,
        )
    if "\x00" in raw:  # os calls raise ValueError on it: a 500 before this check
        raise InvalidRequest(f"{param} must not contain a NUL byte.", param=param)
    path = Path(os.path.expanduser(raw))
    if ".." in path.parts:
        raise InvalidRequest(f"{param} must not contain '..'.", param=param)
    # Roots as configured and as resolved, so both spellings of an allowed directory work.
    given = [Path(os.path.abspath(d)) for d in allowed_dirs]
    real_roots = [Path(os.path.realpath(d)) for d in allowed_dirs]
    candidates = [path] if path.is_absolute() else [root / path for root in given]
    for candidate in candidates:
        lexical = Path(os.path.normpath(candidate))
        if not _within(lexical, given + real_roots):
            continue
        try:
            real = lexical.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if not _within(real, real_roots):
            raise InvalidRequest(
                f"{param} leads outside the allowed directories (through a symbolic link).", param=param
            )
        return _read_regular(real, max_bytes, param)
    if path.is_absolute() and not _within(Path(os.path.normpath(path)), given + real_roots):
        raise InvalidRequest(
            f"{param} is outside the directories this server may read ({', '.join(map(str, given))}).", param=param
        )
    raise InvalidRequest(f"No file at {raw!r}: No image file of that name is in the allowed directories.", param=param)


def _read_regular(path: Path, max_bytes: int, param: str) -> bytes:
    # Only regular files: opening a FIFO waits for a writer forever, a device may never end.
    # Checked before opening, and opened with O_NONBLOCK in case it was swapped meanwhile
    # (O_NOFOLLOW: if the last component became a link since it was resolved, refuse it).
    not_regular = InvalidRequest(f"{param} is not a regular file (a directory, FIFO or device).", param=param)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise not_regular
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise InvalidRequest(f"Cannot read the image file: {exc.strerror}.", param=param) from exc
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise not_regular
        if info.st_size > max_bytes:
            raise image_too_large(max_bytes, param)
        return f.read(max_bytes + 1)


def image_too_large(max_bytes: int, param: str) -> PayloadTooLarge:
    """The one 413 for an input image over the limit, wherever it came from."""
    return PayloadTooLarge(
        f"The image is larger than this server's limit of {max_bytes / 2**20:g} MiB (--max-image-mb): "
        "send a smaller image.",
        param=param,
    )


def decode_base64_image(value: str, param: str, max_bytes: int) -> bytes:
    """Bytes of a base64 string or a `data:image/...;base64,` URI."""
    text = value.strip()
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise InvalidRequest(f"{param} must be a base64 data URI (data:image/png;base64,...).", param=param)
    if len(text) > max_bytes * 4 // 3 + 4:
        raise image_too_large(max_bytes, param)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{param} is not valid base64 (send base64 or a data URI).", param=param) from None
    if len(data) > max_bytes:
        raise image_too_large(max_bytes, param)
    return data


def open_image(data: bytes, param: str = "image") -> Image.Image:
    """Decode image bytes (PNG, JPEG, ...) into a loaded PIL image, or a 400."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_INPUT_PIXELS:
            size = f"{image.width}x{image.height}"
            raise InvalidRequest(f"The image is too large ({size}); send at most 4096x4096.", param=param)
        image.load()
    except InvalidRequest:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        raise InvalidRequest(f"{param} could not be decoded as an image: send a PNG or JPEG.", param=param) from None
    return image
