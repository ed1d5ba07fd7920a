"""Image decoding (chat image_url, img2img and edits inputs) runs in one bounded pool per server
(--preprocess-threads, at most --max-queue waiting): past the cap a 503 with Retry-After, and
requests without images are served meanwhile. Real models: SmolLM2 with the random vision
projector, the random SD checkpoint."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from nexa.config import Settings
from nexa.errors import Overloaded
from nexa.models.manager import ModelManager
from nexa.models.types import ModelType, ResolvedModel
from nexa.server.app import create_app
from nexa.server.threads import Pool
from projector import ensure_projector
from sdxs_checkpoint import ensure_checkpoint


def png(size: int = 64) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


RED = base64.b64encode(png()).decode()


@contextlib.contextmanager
def pool_busy(pool: Pool) -> Iterator[None]:
    """While inside, every thread of `pool` is taken and nothing may wait."""
    started, release = threading.Semaphore(0), threading.Event()

    def hold() -> None:
        started.release()
        release.wait(60)

    saved, pool.max_waiting = pool.max_waiting, 0
    holders = [threading.Thread(target=asyncio.run, args=(pool.run(hold),)) for _ in range(pool.workers)]
    for holder in holders:
        holder.start()
    try:
        for _ in holders:
            assert started.acquire(timeout=60), "a holder never got a thread"
        yield
    finally:
        release.set()
        for holder in holders:
            holder.join(60)
        pool.max_waiting = saved


def overloaded(r: Any) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    err = r.json()["error"]
    assert err["type"] == "server_overloaded" and "--preprocess-threads" in err["message"]


# -- the pool itself ------------------------------------------------------------------------------


def test_pool_caps_running_and_waiting_calls() -> None:
    async def scenario() -> None:
        pool = Pool(1, 1)
        gate = threading.Event()
        running = asyncio.ensure_future(pool.run(gate.wait, 60))
        waiting = asyncio.ensure_future(pool.run(lambda: "second"))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded):
            await pool.run(lambda: "third")
        waiting.cancel()  # a caller that leaves gives its place back at once
        await asyncio.gather(waiting, return_exceptions=True)
        await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(pool.run(lambda: "fourth"))
        gate.set()
        assert await running is True and await queued == "fourth"
        pool.close()

    asyncio.run(scenario())


# -- chat images ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vision_manager(smollm2: ResolvedModel) -> Iterator[ModelManager]:
    model = ResolvedModel(
        name="smollm2-vision", path=smollm2.path, model_type=ModelType.MULTIMODAL, projector=ensure_projector()
    )
    manager = ModelManager.load(model, Settings(n_ctx=1024, n_threads=2))
    yield manager
    manager.close()


def test_chat_images_past_the_cap_are_503_while_text_answers(vision_manager: ModelManager) -> None:
    app = create_app(Settings(n_threads=2, preprocess_threads=1), vision_manager)
    client = TestClient(app)  # no `with`: the lifespan would close the shared model
    image_chat = {
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{RED}"}},
            ]}
        ],
        "max_tokens": 2,
        "temperature": 0,
    }
    text_chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}
    with pool_busy(app.state.preprocess):
        overloaded(client.post("/v1/chat/completions", json=image_chat))
        r = client.post("/v1/chat/completions", json=text_chat)
        assert r.status_code == 200, r.text
    r = client.post("/v1/chat/completions", json=image_chat)
    assert r.status_code == 200, r.text


# -- img2img and edits ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_manager() -> Iterator[ModelManager]:
    cache = Path(os.environ.get("NEXA_TEST_MODELS", Path.home() / ".cache" / "nexa" / "test-models"))
    model = ResolvedModel(name="sdxs-random", path=ensure_checkpoint(cache), model_type=ModelType.COMPUTER_VISION)
    manager = ModelManager.load(model, Settings(n_threads=2))
    yield manager
    manager.close()


def test_img2img_and_edits_past_the_cap_are_503(image_manager: ModelManager, tmp_path: Path) -> None:
    settings = Settings(n_threads=2, image_output_dir=str(tmp_path), max_image_size=256, max_image_steps=2)
    app = create_app(settings, image_manager)
    client = TestClient(app)
    img2img = {"prompt": "a cat", "image": RED, "width": 64, "height": 64, "sample_steps": 1}
    with pool_busy(app.state.preprocess):
        overloaded(client.post("/v1/img2img", json=img2img))
        edit = {"prompt": "a cat", "size": "64x64", "sample_steps": "1"}
        overloaded(client.post("/v1/images/edits", files={"image": ("red.png", png())}, data=edit))
    r = client.post("/v1/img2img", json=img2img)
    assert r.status_code == 200, r.text
