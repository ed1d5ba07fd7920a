"""Who may talk to the server: API keys, browser origins (CORS), the Host header, and the
refusal to serve the network without a key. One app per case over the session's model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

import nexa
from nexa.cli import build_parser, main, settings_from_args
from nexa.config import Settings
from nexa.errors import StartupError
from nexa.models.manager import ModelManager
from nexa.server.app import create_app
from support.servers import LiveServer

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
LOCAL = "http://localhost:8000"  # a Host the loopback check serves


def client(manager: ModelManager, base_url: str = LOCAL, **settings: Any) -> TestClient:
    # No `with`: the lifespan would close the shared session model.
    return TestClient(create_app(Settings(allowed_hosts=[], **settings), manager), base_url=base_url)


def assert_envelope(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]


# -- API keys ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(manager: ModelManager) -> TestClient:
    return client(manager, api_key=["key-one", "key-two"])


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"x-api-key": "key-one-"},
                                     {"Authorization": "key-one"}, {"Authorization": "Basic key-one"}])  # fmt: skip
def test_a_missing_or_wrong_key_is_401(keyed: TestClient, headers: dict[str, str]) -> None:
    for r in (keyed.get("/v1/models", headers=headers), keyed.post("/v1/chat/completions", json=CHAT, headers=headers)):
        assert_envelope(r, 401, "invalid_api_key")
        assert r.headers["www-authenticate"] == "Bearer"
        assert "key-one" not in r.text


@pytest.mark.parametrize(
    "headers", [{"Authorization": "Bearer key-one"}, {"authorization": "bearer key-two"}, {"x-api-key": "key-two"}]
)
def test_any_configured_key_passes_in_either_header(keyed: TestClient, headers: dict[str, str]) -> None:
    assert keyed.get("/v1/models", headers=headers).status_code == 200
    r = keyed.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"


def test_the_server_settings_need_the_key_and_never_show_it(keyed: TestClient) -> None:
    assert_envelope(keyed.get("/v1/server"), 401, "invalid_api_key")
    r = keyed.get("/v1/server", headers={"Authorization": "Bearer key-two"})
    assert r.status_code == 200 and r.json()["version"] == nexa.__version__
    settings = r.json()["settings"]
    assert settings["n_ctx"] == keyed.app.state.settings.n_ctx and "max_body_bytes" in settings  # type: ignore[attr-defined]
    assert "api_key" not in settings and "api_key_file" not in settings and "key-" not in r.text


def test_health_and_the_playground_stay_public_the_docs_do_not(keyed: TestClient) -> None:
    assert keyed.get("/health").status_code == 200
    assert keyed.get("/").status_code == 200
    assert keyed.get("/playground/app.js").status_code == 200  # a page cannot send a key for its scripts
    assert keyed.get("/playground/missing.js").status_code == 404
    for path in ("/docs", "/openapi.json"):
        assert keyed.get(path).status_code == 401
        assert keyed.get(path, headers={"x-api-key": "key-one"}).status_code == 200


def test_without_a_key_everything_is_open(manager: ModelManager) -> None:
    open_ = client(manager)
    assert open_.get("/v1/models").status_code == 200
    assert open_.get("/openapi.json").status_code == 200


def test_keys_from_a_file_and_the_variable(
    manager: ModelManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("#not-a-key\n\n  file-key  \n")
    monkeypatch.setenv("NEXA_API_KEY", "env-key")
    c = client(manager, api_key_file=str(keys))
    assert c.get("/v1/models", headers={"Authorization": "Bearer file-key"}).status_code == 200
    assert c.get("/v1/models", headers={"Authorization": "Bearer env-key"}).status_code == 200
    assert c.get("/v1/models", headers={"Authorization": "Bearer #not-a-key"}).status_code == 401


def test_the_key_stays_out_of_the_settings_repr() -> None:
    assert "s3cret" not in repr(Settings(api_key=["s3cret"]))


def test_the_openai_client_with_its_api_key(manager: ModelManager) -> None:
    app = create_app(Settings(api_key=["sk-local"]), manager)
    with LiveServer(app) as live:
        good = openai.OpenAI(base_url=f"{live.url}/v1", api_key="sk-local", max_retries=0)
        assert good.models.list().data
        answer = good.chat.completions.create(model="x", messages=CHAT["messages"], max_tokens=1)
        assert answer.choices[0].message.content is not None
        bad = openai.OpenAI(base_url=f"{live.url}/v1", api_key="sk-other", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as refused:
            bad.models.list()
        assert refused.value.code == "invalid_api_key"


# -- browser origins ---------------------------------------------------------------------------

EVIL = "http://evil.example"


def preflight(c: TestClient, origin: str) -> Any:
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip
    return c.options("/v1/chat/completions", headers=headers)


@pytest.fixture(scope="module")
def default_app(manager: ModelManager) -> TestClient:
    return client(manager)


def test_another_sites_page_cannot_read_the_answer(default_app: TestClient) -> None:
    r = default_app.post("/v1/chat/completions", json=CHAT, headers={"Origin": EVIL})
    assert "access-control-allow-origin" not in r.headers
    r = preflight(default_app, EVIL)
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    assert r.json()["error"]["code"] == "cors_refused"  # the envelope, as every refusal


@pytest.mark.parametrize(
    "origin", ["http://localhost:3000", "http://localhost", "https://127.0.0.1:5173", "http://[::1]:8080"]
)
def test_local_pages_may_call_the_api(default_app: TestClient, origin: str) -> None:
    r = default_app.get("/v1/models", headers={"Origin": origin})
    assert r.headers["access-control-allow-origin"] == origin
    assert "access-control-allow-credentials" not in r.headers
    r = preflight(default_app, origin)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize("origin", ["http://localhost.evil.example", "http://127.0.0.1.evil.example:80"])
def test_names_that_merely_start_like_localhost_are_not_local(default_app: TestClient, origin: str) -> None:
    assert "access-control-allow-origin" not in default_app.get("/v1/models", headers={"Origin": origin}).headers


def test_cors_origin_adds_one_and_the_servers_own_origin_is_allowed(manager: ModelManager) -> None:
    c = client(manager, host="10.1.2.3", port=9000, cors_origins=["https://app.example"], api_key=["k"])
    for origin in ("https://app.example", "http://10.1.2.3:9000"):
        assert preflight(c, origin).status_code == 200  # a preflight never carries the key
        r = c.get("/v1/models", headers={"Origin": origin})  # an allowed page can read its 401
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == origin
    assert preflight(c, EVIL).status_code == 400


def test_a_wildcard_origin_never_comes_with_credentials(manager: ModelManager) -> None:
    r = client(manager, cors_origins=["*"]).get("/v1/models", headers={"Origin": EVIL})
    assert r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers


# -- the Host header ---------------------------------------------------------------------------


@pytest.mark.parametrize("bind", ["localhost", "127.0.0.1", "::1"])
def test_a_loopback_server_refuses_other_host_names(manager: ModelManager, bind: str) -> None:
    for url in ("http://evil.example", "http://evil.example:8000", "http://testserver", "http://127.0.0.2"):
        r = client(manager, url, host=bind).get("/health")
        assert_envelope(r, 403, "host_not_allowed")
    for url in ("http://localhost:8000", "http://LOCALHOST", "http://127.0.0.1:1234", "http://[::1]:8000"):
        assert client(manager, url, host=bind).get("/health").status_code == 200, url


def test_allowed_host_adds_a_name(manager: ModelManager) -> None:
    c = TestClient(create_app(Settings(allowed_hosts=["Nexa.Lan"]), manager), base_url="http://nexa.lan:8000")
    assert c.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_a_public_bind_serves_any_host_name(manager: ModelManager) -> None:
    assert client(manager, "http://nexa.example.com", host="0.0.0.0").get("/health").status_code == 200


# -- start-up: no open server on the network ----------------------------------------------------


@pytest.fixture
def no_key_variables(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("NEXA_API_KEY", "NEXA_API_KEY_FILE", "NEXA_INSECURE_PUBLIC", "NEXA_HOST"):
        monkeypatch.delenv(name, raising=False)
    yield


def parse(*argv: str) -> Settings:
    return settings_from_args(build_parser().parse_args(["server", *argv]))


@pytest.mark.usefixtures("no_key_variables")
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "my-laptop.lan"])
def test_a_public_bind_without_a_key_refuses_to_start(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(StartupError, match="--insecure-public"):
        parse("--host", host)
    assert main(["server", "--host", host]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nexa: error: --host") and "--api-key" in lines[0]


@pytest.mark.usefixtures("no_key_variables")
def test_a_public_bind_starts_with_a_key_or_insecure_public(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "keys").write_text("k\n")
    assert parse("--host", "0.0.0.0", "--api-key", "k").api_key == ["k"]
    assert parse("--host", "0.0.0.0", "--api-key-file", str(tmp_path / "keys")).api_key == []
    assert parse("--host", "0.0.0.0", "--insecure-public").insecure_public
    for loopback in ("localhost", "127.0.0.1", "127.1.2.3", "::1"):
        assert parse("--host", loopback).host == loopback
    monkeypatch.setenv("NEXA_API_KEY", "from-env")
    assert parse("--host", "0.0.0.0").api_key == ["from-env"]


@pytest.mark.usefixtures("no_key_variables")
def test_unusable_keys_are_start_up_errors_that_do_not_repeat_them(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="--api-key must be printable ASCII") as bad:
        parse("--api-key", "has space-secret")
    assert "secret" not in str(bad.value)
    with pytest.raises(StartupError, match="--api-key"):
        parse("--api-key", "")
    (tmp_path / "empty").write_text("# nothing yet\n")
    with pytest.raises(StartupError, match="holds no key"):
        parse("--api-key-file", str(tmp_path / "empty"))
    with pytest.raises(StartupError, match="--api-key-file"):
        parse("--api-key-file", str(tmp_path / "missing"))
