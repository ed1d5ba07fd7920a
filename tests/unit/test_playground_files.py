"""The playground's files as the server sends them: each with its type and the page's
Content-Security-Policy, nothing outside the folder, and every file the page refers to present."""

from __future__ import annotations

import ast
import re
from fnmatch import fnmatch
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from nexa.server.errors import install_error_handlers
from nexa.server.routers import playground

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(playground.router)
    return TestClient(app)


def test_the_page_and_its_files_carry_their_type_and_the_policy(client: TestClient) -> None:
    for path, kind in (("/", "text/html"), ("/playground/app.js", "text/javascript"),
                       ("/playground/style.css", "text/css"), ("/playground/icon.svg", "image/svg+xml")):  # fmt: skip
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), path
        assert "connect-src 'self'" in r.headers["content-security-policy"]
        assert "default-src 'self'" in r.headers["content-security-policy"]


@pytest.mark.parametrize("name", ["missing.js", "%2e%2e", ".%2e", "%2e%2e%2fapp.py", "__init__.py", "index.htm"])
def test_nothing_else_is_served(client: TestClient, name: str) -> None:
    r = client.get("/playground/" + name)
    assert r.status_code == 404, (name, r.text)


def test_every_file_the_page_names_exists_and_is_package_data() -> None:
    folder = playground.FOLDER
    names = set()
    for source in folder.iterdir():
        text = source.read_text()
        names |= set(re.findall(r"""(?:href|src)="/playground/([\w.-]+)\"""", text))
        names |= set(re.findall(r"""from "\./([\w.-]+)\"""", text))
    assert names and all((folder / name).is_file() for name in names), names
    # [tool.setuptools.package-data]: what a non-editable install copies besides the modules
    globs = ast.literal_eval(re.search(r"^nexa = (\[.*?\])", (ROOT / "pyproject.toml").read_text(), re.M)[1])
    for source in folder.iterdir():
        relative = source.relative_to(folder.parents[1]).as_posix()  # server/playground/app.js
        assert any(fnmatch(relative, glob) for glob in globs), relative
