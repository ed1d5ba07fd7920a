"""The playground at / in a real browser: Debian's Chromium driven by Playwright, against a real
`nexa server` on the real small models (SmolLM2 for chat, Whisper tiny.en, MiniLM embeddings;
the random SD checkpoint and SmolLM2 with a random vision projector in --models-dir, loaded from
the page's Models tab), and a second server that requires an API key.

Every test records each request the page makes and fails if one leaves the server's origin,
fails on any uncaught script error, and saves a screenshot in its tmp dir. Chromium comes from
Debian (`apt-get install -y chromium`, as the README's test command does); a missing browser
fails these tests, never skips them."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

import nexa
from fakehub import FakeHub
from minilm_gguf import minilm_gguf
from projector import ensure_projector
from sdxs_checkpoint import ensure_checkpoint
from support.audio import wer, words
from support.servers import ServerProcess

CHROMIUM = os.environ.get("NEXA_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
AUDIO = Path(__file__).resolve().parent.parent / "audio"
SPEECH = "Open the window and let the cool air come in."  # tests/audio/s1.wav
TEST_MODELS = Path(os.environ.get("NEXA_TEST_MODELS", Path.home() / ".cache" / "nexa" / "test-models"))
SLOW = 300_000  # ms: a real model on a shared 2-core machine
MAX_TOKENS = 800  # the stopped answer's budget: far more than it gets before Stop
expect.set_options(timeout=SLOW)


@pytest.fixture(scope="module")
def server(smollm2, whisper_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Chat, speech and embeddings named on the command line; an image and a vision model in
    --models-dir, not loaded until the page asks."""
    models = tmp_path_factory.mktemp("playground-models")
    (models / "sdxs.safetensors").symlink_to(ensure_checkpoint(TEST_MODELS))
    (models / "vision").mkdir()  # SmolLM2 with a random llava projector beside it: a vision model
    (models / "vision" / "smollm2.gguf").symlink_to(smollm2.path)
    (models / "vision" / "mmproj.gguf").symlink_to(ensure_projector())
    args = [str(smollm2.path), str(whisper_model.path), str(minilm_gguf()), "-lp", "--models-dir", str(models),
            "--output-dir", str(tmp_path_factory.mktemp("playground-images")), "-c", "2048", "-np", "1"]  # fmt: skip
    with ServerProcess.nexa(*args, env=own_cache(tmp_path_factory), start_timeout_s=300) as process:
        yield process


def own_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An empty model store: the models listed are the ones named here, whatever the machine's
    cache holds."""
    return {**os.environ, "NEXA_CACHE_ROOT": str(tmp_path_factory.mktemp("playground-cache"))}


@contextmanager
def browser_page(
    tmp_path: Path, origin: str, viewport: tuple[int, int] = (1280, 860), flags: tuple[str, ...] = ()
) -> Iterator[Page]:
    """A page in a fresh Chromium profile; afterwards, every request it made stayed on `origin`."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's package (`apt-get install -y chromium`, as the "
                    "README's test command does) or set NEXA_CHROMIUM to its path")  # fmt: skip
    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=[*ARGS, *flags],
            viewport={"width": viewport[0], "height": viewport[1]}, accept_downloads=True,
        )  # fmt: skip
        context.on("request", lambda request: requests.append(request.url))
        page = context.pages[0] if context.pages else context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.set_default_timeout(SLOW)
        try:
            yield page
        finally:
            page.screenshot(path=tmp_path / "playground.png", full_page=True)
            context.close()
    # blob: URLs are the page's own images and files (blob:http://origin/uuid): no network.
    elsewhere = [url for url in requests if not url.removeprefix("blob:").startswith(origin + "/")]
    assert requests and not elsewhere, f"requests that left {origin}: {elsewhere}"
    assert not errors, errors


@pytest.fixture
def page(server: ServerProcess, tmp_path: Path) -> Iterator[Page]:
    with browser_page(tmp_path, server.url) as page:
        yield page


def metrics(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=30).text
    return {m[1]: float(m[2]) for m in re.finditer(r"^nexa_(\w+) (\S+)$", text, re.M)}


def open_tab(page: Page, name: str) -> None:
    tab = page.locator(f"#tabs [data-tab={name}]")
    expect(tab).to_be_enabled()
    tab.click()
    expect(page.locator(f"#{name}")).to_be_visible()


def test_chat_streams_markdown_shows_errors_and_stop_really_cancels(page: Page, server: ServerProcess) -> None:
    page.goto(server.url)
    open_tab(page, "chat")
    expect(page.locator("#chat-model")).to_have_value(re.compile("SmolLM2"))
    # An error from the server is its envelope's message, and the page goes on.
    page.fill("#chat-temperature", "5")
    page.fill("#chat-input", "Hi")
    page.click("#chat-send")
    expect(page.locator("#error")).to_contain_text("temperature must be between 0.0 and 2.0")
    expect(page.locator("#chat-log .msg.assistant.failed")).to_contain_text("temperature must be between")

    page.fill("#chat-temperature", "0")
    page.fill("#chat-max-tokens", "24")
    page.fill("#chat-input", "Write a Python function that adds two numbers.")
    page.click("#chat-send")
    answer = page.locator("#chat-log .msg.assistant").last
    expect(answer).to_have_class(re.compile(r"\bdone\b"))
    expect(page.locator("#error")).to_be_hidden()
    assert answer.locator(".body").inner_text().strip()
    expect(page.locator("#chat-stats")).to_contain_text(re.compile(r"first token [\d.]+ s · [\d.]+ tokens/s"))

    # Stop while the answer streams in: the fetch is aborted, the text stops growing, and the
    # server drops the request (a finished one would count in requests_total).
    before = metrics(server.url)
    page.fill("#chat-temperature", "0.8")
    page.fill("#chat-max-tokens", str(MAX_TOKENS))
    page.fill("#chat-input", "Tell me a very long story about a dragon who learns to bake bread.")
    page.click("#chat-send")
    streaming = page.locator("#chat-log .msg.assistant").last
    page.wait_for_function(
        "() => document.querySelector('#chat-log .msg.assistant:last-child .body').innerText.length > 40"
    )
    expect(page.locator("#chat-stop")).to_be_enabled()
    page.click("#chat-stop")
    expect(streaming).to_have_class(re.compile(r"\bstopped\b"))
    expect(page.locator("#chat-send")).to_be_enabled()
    shown = streaming.locator(".body").inner_text()
    page.wait_for_timeout(1500)
    assert streaming.locator(".body").inner_text() == shown
    for _ in range(600):
        now = metrics(server.url)
        if now["requests_running"] == 0:
            break
        page.wait_for_timeout(100)
    assert now["requests_running"] == 0 and now["requests_total"] == before["requests_total"], (before, now)
    expect(page.locator("#chat-log .msg")).to_have_count(6)


def test_chat_json_schema_and_tool_calls(page: Page, server: ServerProcess) -> None:
    page.goto(server.url)
    open_tab(page, "chat")
    page.fill("#chat-temperature", "0")
    page.fill("#chat-max-tokens", "64")
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    page.fill("#chat-schema", json.dumps(schema))
    page.fill("#chat-input", "How old is the oldest tree? Answer in JSON.")
    page.click("#chat-send")
    answer = page.locator("#chat-log .msg.assistant").last
    expect(answer).to_have_class(re.compile(r"\bdone\b"))
    assert isinstance(json.loads(answer.locator(".body").inner_text())["age"], int)

    page.click("#chat-clear")
    expect(page.locator("#chat-log .msg")).to_have_count(0)
    page.fill("#chat-schema", "")
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}  # fmt: skip
    page.fill("#chat-tools", json.dumps([tool]))
    page.select_option("#chat-tool-choice", "required")
    page.fill("#chat-input", "What is the weather in Paris?")
    page.click("#chat-send")
    answer = page.locator("#chat-log .msg.assistant").last
    expect(answer).to_have_class(re.compile(r"\bdone\b"))
    expect(answer.locator(".tool-call").first).to_contain_text(re.compile(r"get_weather\(\{.*\"city\""))


def test_chat_attaches_an_image_on_a_vision_model(page: Page, server: ServerProcess, tmp_path: Path) -> None:
    page.goto(server.url)
    open_tab(page, "server")
    row = page.locator("#models-table tr[data-model=vision]")
    row.get_by_role("button", name="Load").click()
    expect(row.locator("td.state")).to_have_text("loaded")
    open_tab(page, "chat")
    expect(page.locator("#chat-attach-label")).to_be_hidden()  # the default model sees no images
    page.select_option("#chat-model", "vision")
    expect(page.locator("#chat-attach-label")).to_be_visible()
    picture = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (220, 20, 20)).save(picture)
    page.set_input_files("#chat-attach", str(picture))
    expect(page.locator("#chat-attached")).to_have_text("red.png")
    page.fill("#chat-max-tokens", "8")
    page.fill("#chat-input", "What colour is this picture?")
    page.click("#chat-send")
    expect(page.locator("#chat-log .msg.assistant").last).to_have_class(re.compile(r"\bdone\b"))
    expect(page.locator("#chat-log .msg.user").last).to_contain_text("[image attached]")
    expect(page.locator("#chat-attached")).to_have_text("")  # sent with that message only


def test_models_tab_loads_the_image_model_and_images_come_out(page: Page, server: ServerProcess, tmp_path) -> None:
    page.goto(server.url)
    expect(page.locator("#tabs [data-tab=images]")).to_be_disabled()  # no image model loaded yet
    open_tab(page, "server")
    expect(page.locator("#server-info")).to_contain_text(nexa.__version__)
    expect(page.locator("#server-info")).to_contain_text("n_ctx2048")  # -c 2048, from GET /v1/server
    page.get_by_text("all settings").click()
    expect(page.locator("#server-settings")).to_contain_text('"models_dir"')
    expect(page.locator("#metrics-now")).to_contain_text("tokens/s")
    row = page.locator("#models-table tr[data-model=sdxs]")
    expect(row.locator("td.state")).to_have_text("not_loaded")
    row.get_by_role("button", name="Load").click()
    expect(row.locator("td.state")).to_have_text("loaded")
    open_tab(page, "images")

    page.select_option("#image-size", "128x128")
    page.fill("#image-steps", "1")
    page.fill("#image-seed", "42")
    page.click("#image-go")
    figure = page.locator("#gallery figure")
    expect(figure).to_have_count(1)
    expect(page.locator("#image-progress")).to_be_hidden()
    expect(figure.first).to_contain_text("txt2img · 128x128 · seed 42")
    assert figure.first.locator("img").evaluate("img => img.complete && img.naturalWidth") == 128
    with page.expect_download() as download:
        figure.first.get_by_role("link", name="Download").click()
    assert download.value.suggested_filename == "nexa-42.png"
    assert Path(download.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    start = tmp_path / "start.png"
    Image.new("RGB", (128, 128), (200, 30, 30)).save(start)
    page.set_input_files("#image-init", str(start))
    page.fill("#image-strength", "0.5")
    page.evaluate("""() => {
        const bar = document.getElementById('image-progress');
        new MutationObserver(() => { window.progressShown ||= !bar.hidden; }).observe(bar, {attributes: true});
    }""")
    page.click("#image-go")
    expect(figure).to_have_count(2)
    assert page.evaluate("() => window.progressShown")  # the bar was up while sampling
    expect(figure.first).to_contain_text("img2img · 128x128 · seed 42")

    open_tab(page, "server")
    row.get_by_role("button", name="Unload").click()
    expect(row.locator("td.state")).to_have_text("not_loaded")
    expect(page.locator("#tabs [data-tab=images]")).to_be_disabled()


def test_speech_upload_shows_the_transcript_segments_and_subtitles(page: Page, server: ServerProcess) -> None:
    page.goto(server.url)
    open_tab(page, "speech")
    page.set_input_files("#speech-file", str(AUDIO / "s1.wav"))
    expect(page.locator("#speech-player")).to_be_visible()
    page.click("#speech-go")
    expect(page.locator("#speech-result")).to_be_visible()
    assert wer(SPEECH, page.locator("#speech-text").inner_text()) < 0.3
    rows = page.locator("#speech-segments tbody tr")
    expect(rows.first).to_contain_text("00:00:00.000")
    with page.expect_download() as download:
        page.click("#speech-srt")
    srt = Path(download.value.path()).read_text()
    assert re.match(r"1\n00:00:00,000 --> 00:00:\d\d,\d{3}\n\S", srt), srt
    assert wer(SPEECH, " ".join(line for line in srt.splitlines()[2::4])) < 0.3


def test_speech_recorded_from_the_microphone(server: ServerProcess, tmp_path: Path) -> None:
    # Chromium's fake microphone plays a file in a loop, and grants access without asking.
    microphone = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                  f"--use-file-for-fake-audio-capture={AUDIO / 's1.wav'}")  # fmt: skip
    with browser_page(tmp_path, server.url, flags=microphone) as page:
        page.goto(server.url)
        open_tab(page, "speech")
        page.click("#speech-record")
        expect(page.locator("#speech-record")).to_have_text("Stop recording")
        page.wait_for_timeout(7000)  # the 3 s sentence at least once whole, wherever the loop starts
        page.click("#speech-record")
        expect(page.locator("#speech-source")).to_have_text(re.compile(r"recording\.(webm|ogg)"))
        page.click("#speech-go")
        expect(page.locator("#speech-result")).to_be_visible()
        heard = set(words(page.locator("#speech-text").inner_text()))
        assert len(heard & set(words(SPEECH))) >= 6, heard


def test_embeddings_similarity_matrix(page: Page, server: ServerProcess) -> None:
    page.goto(server.url)
    open_tab(page, "embeddings")
    expect(page.locator("#embed-model")).to_have_value(re.compile("MiniLM"))  # the embedding model first
    page.click("#embed-go")
    cells = page.locator("#embed-matrix td")
    expect(cells).to_have_count(16)
    expect(page.locator("#embed-state")).to_contain_text("384 dimensions")
    values = [float(v) for v in cells.evaluate_all("tds => tds.map(td => td.dataset.value)")]
    m = [values[i * 4 : i * 4 + 4] for i in range(4)]
    assert all(abs(m[i][i] - 1) < 1e-3 for i in range(4))
    assert all(abs(m[i][j] - m[j][i]) < 1e-6 for i in range(4) for j in range(4))
    # cat/kitten and stocks/interest rates are nearer each other than across the two topics
    assert m[0][1] > max(m[0][2], m[0][3]) and m[2][3] > max(m[2][0], m[2][1]), m


def test_narrow_screen_and_markdown_that_loads_nothing(server: ServerProcess, tmp_path: Path) -> None:
    with browser_page(tmp_path, server.url, viewport=(390, 844)) as page:
        page.goto(server.url)
        open_tab(page, "chat")
        for tab in ("chat", "speech", "embeddings", "server"):
            open_tab(page, tab)
            assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), tab
        source = (
            "<img src=x onerror=alert(1)> **bold** _it_ `a<b`\n![pic](http://example.com/x.png) "
            '[js](javascript:alert(1))\n\n```python\ndef f():\n    return "x"  # done\n```\n- one\n- two'
        )
        html = page.evaluate("async s => (await import('/playground/markdown.js')).renderMarkdown(s)", source)
        assert "<img" not in html and "&lt;img src=x" in html and 'href="javascript' not in html, html
        assert "<strong>bold</strong>" in html and "<em>it</em>" in html and "<code>a&lt;b</code>" in html
        assert '<a href="http://example.com/x.png"' in html  # an image becomes a link: nothing loads
        assert '<span class="tok-k">def</span>' in html and "<ul><li>one</li><li>two</li></ul>" in html


@pytest.fixture(scope="module")
def keyed(smollm2, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = [str(smollm2.path), "-lp", "-c", "512", "-np", "1", "--api-key", "sesame"]
    with ServerProcess.nexa(*args, env=own_cache(tmp_path_factory), start_timeout_s=300) as process:
        yield process


def test_the_page_asks_for_the_api_key_once_and_sends_it(keyed: ServerProcess, tmp_path: Path) -> None:
    with browser_page(tmp_path, keyed.url) as page:
        sent: list[str | None] = []
        page.on("request", lambda r: sent.append(r.headers.get("authorization")) if "/v1/" in r.url else None)
        page.goto(keyed.url)
        dialog = page.locator("#key-dialog")
        expect(dialog).to_be_visible()
        page.fill("#key-input", "wrong")
        page.click("#key-form button")
        expect(page.locator("#key-error")).to_contain_text("Missing or invalid API key")
        page.fill("#key-input", "sesame")
        page.click("#key-form button")
        expect(dialog).to_be_hidden()
        expect(page.locator("#status")).to_contain_text("1 model loaded")
        page.fill("#chat-max-tokens", "4")
        page.fill("#chat-input", "Hi")
        page.click("#chat-send")
        expect(page.locator("#chat-log .msg.assistant")).to_have_class(re.compile(r"\bdone\b"))
        page.reload()  # the key is kept for the tab: no second question
        expect(page.locator("#status")).to_contain_text("1 model loaded")
        expect(dialog).to_be_hidden()
        assert sent[:2] == [None, "Bearer wrong"] and set(sent[2:]) == {"Bearer sesame"}, sent


@pytest.fixture(scope="module")
def pulling(smollm2, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that lets clients download (--allow-pull) from a local stand-in for the Hugging
    Face hub serving SmolLM2 as a repository."""
    hub = FakeHub().start()
    hub.add_hf_repo("org/SmolLM2-GGUF", {"smollm2-Q4_1.gguf": smollm2.path.read_bytes()})
    env = {**own_cache(tmp_path_factory), "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    args = [str(smollm2.path), "-lp", "-c", "512", "-np", "1", "--allow-pull"]
    try:
        with ServerProcess.nexa(*args, env=env, start_timeout_s=300) as process:
            yield process
    finally:
        hub.stop()


def test_the_models_tab_downloads_and_deletes_a_model(pulling: ServerProcess, tmp_path: Path) -> None:
    with browser_page(tmp_path, pulling.url) as page:
        page.goto(pulling.url)
        open_tab(page, "server")
        page.fill("#download-name", "org/SmolLM2-GGUF")
        page.select_option("#download-source", "hf")
        page.click("#download-go")
        expect(page.locator("#download-state")).to_contain_text("org/SmolLM2-GGUF:smollm2-Q4_1.gguf downloaded (NLP)")
        expect(page.locator("#download-progress")).to_be_hidden()
        row = page.locator('#models-table tr[data-model="org/SmolLM2-GGUF:smollm2-Q4_1.gguf"]')
        expect(row.locator("td.state")).to_have_text("not_loaded")
        row.get_by_role("button", name="Delete").click()
        expect(row).to_have_count(0)
        assert not any("SmolLM2-GGUF" in m["id"] for m in httpx.get(pulling.url + "/v1/models").json()["data"])

        page.fill("#download-name", "no-such-model")
        page.select_option("#download-source", "")
        page.click("#download-go")
        expect(page.locator("#error")).to_contain_text("'no-such-model' is not in the catalogue")
