"""The playground at GET / and its files at GET /playground/{name}: plain HTML, CSS and JavaScript
shipped in the package (nexa/server/playground), no build step and nothing fetched from elsewhere.

Both are public, like the welcome page they replace: a page cannot send a key with its own
<script> tags. The page itself asks for the key when the API answers 401."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from nexa.errors import NotFound

router = APIRouter(tags=["playground"], include_in_schema=False)

FOLDER = Path(__file__).resolve().parent.parent / "playground"
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
# The browser itself refuses any request the page might make to another origin (a link in a
# model's Markdown answer, an image URL), and any script that is not one of these files.
POLICY = (
    "default-src 'self'; img-src 'self' blob:; media-src 'self' blob:; connect-src 'self'; "
    "script-src 'self'; style-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {"Content-Security-Policy": POLICY, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def _file(name: str) -> FileResponse:
    path = FOLDER / name
    if path.suffix not in TYPES or not path.is_file():
        raise NotFound(f"The playground has no file {name!r}.")
    return FileResponse(path, media_type=TYPES[path.suffix], headers=HEADERS)


@router.get("/")
async def index() -> FileResponse:
    return _file("index.html")


@router.get("/playground/{name}")
async def asset(name: str) -> FileResponse:
    return _file(name)  # `name` holds no "/": only the folder's own files
