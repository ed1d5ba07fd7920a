"""stable-diffusion.cpp engine (stable-diffusion-cpp-python): txt2img and img2img.

One `StableDiffusion` context per loaded model. stable-diffusion.cpp keeps per-context state and
its progress callback is process-wide, so generations run one at a time behind a lock; callers
run `generate` in a worker thread and the event loop never waits on it.
"""

from __future__ import annotations

import ctypes
import logging
import random
import time
from pathlib import Path
from typing import Any

from PIL import Image

from nexa.config import default
from nexa.engines.base import Engine, Task, Turns
from nexa.errors import InvalidRequest

log = logging.getLogger("nexa.engine.diffusion")
native_log = logging.getLogger("nexa.engine.diffusion.native")

# stable-diffusion.cpp's sd_log_level_t -> logging levels. Its INFO lines (tensor loading,
# per-stage timings) are detail for operators, so they go to DEBUG; our own progress lines
# are the INFO view.
_NATIVE_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.WARNING, 3: logging.ERROR}

MAX_SEED = 2**31 - 1


class DiffusionEngine(Engine):
    tasks = frozenset({Task.TXT2IMG, Task.IMG2IMG})

    def __init__(self, path: Path, *, name: str, load_args: dict[str, Any], max_queue: int = default("max_queue")):
        import stable_diffusion_cpp
        from stable_diffusion_cpp import stable_diffusion as sd_module

        self.name = name
        self.path = path
        self._turns = Turns(max_queue)  # one generation at a time, a bounded queue behind it
        self._samplers = sorted(k for k in sd_module.SAMPLE_METHOD_MAP if k not in ("default", "sample_method_count"))
        self._sd_cpp = stable_diffusion_cpp
        self._route_native_output(stable_diffusion_cpp)  # before loading: loading logs a lot
        started = time.perf_counter()
        self._sd: Any = stable_diffusion_cpp.StableDiffusion(**load_args)
        logging.getLogger("stable-diffusion-cpp-python").setLevel(logging.CRITICAL)  # see _route_native_output
        log.info("loaded %s in %.1fs (%d threads)", path.name, time.perf_counter() - started, load_args["n_threads"])

    def _route_native_output(self, sd_cpp: Any) -> None:
        # The wrapper prints native logs to stderr with inverted levels, prints system info to
        # stdout on every call (unless its logger is silenced, as done after loading), and
        # stable-diffusion.cpp draws progress bars on stdout when no progress callback is set.
        # Send all of it through `logging` instead. The C side keeps only pointers, so the
        # callback objects must live as long as the engine.
        @sd_cpp.sd_log_callback
        def to_logging(level: int, text: bytes, _data: ctypes.c_void_p) -> None:
            message = text.decode("utf-8", errors="replace").rstrip()
            if message:
                native_log.log(_NATIVE_LEVELS.get(level, logging.INFO), "%s", message)

        @sd_cpp.sd_progress_callback
        def quiet_progress(step: int, steps: int, seconds: float, _data: ctypes.c_void_p) -> None:
            native_log.debug("progress %d/%d", step, steps)

        self._callbacks = (to_logging, quiet_progress)
        sd_cpp.sd_set_log_callback(to_logging, ctypes.c_void_p(0))
        sd_cpp.sd_set_progress_callback(quiet_progress, ctypes.c_void_p(0))

    def describe(self) -> dict[str, Any]:
        return {"samplers": self._samplers}

    def generate(
        self,
        *,
        prompt: str,
        negative_prompt: str = "",
        width: int = 256,
        height: int = 256,
        cfg_scale: float = 7.0,
        steps: int = 20,
        seed: int = 0,
        n: int = 1,
        sampler: str | None = None,
        init_image: Image.Image | None = None,
        mask_image: Image.Image | None = None,
        strength: float = 0.75,
    ) -> tuple[list[Image.Image], int]:
        """Make `n` images (RGB); returns them and the seed used (a negative seed picks one).

        With `init_image` this is img2img: `strength` 0 keeps the image, 1 replaces it.
        Blocking: call it from a worker thread.
        """
        if sampler is not None and sampler not in self._samplers:
            choices = ", ".join(self._samplers)
            raise InvalidRequest(f"Unknown sampler {sampler!r}: use one of {choices}.", param="sampler")
        if seed < 0:
            seed = random.randint(0, MAX_SEED)
        progress = Progress(self.name, log)
        with self._turns():
            if self._sd is None:
                raise RuntimeError("the model has been closed")
            started = time.perf_counter()
            try:
                images = self._sd.generate_image(
                    prompt=prompt,
                    negative_prompt=negative_prompt,
                    width=width,
                    height=height,
                    cfg_scale=cfg_scale,
                    sample_steps=steps,
                    sample_method=sampler or "default",
                    seed=seed,
                    batch_count=n,
                    init_image=init_image,
                    mask_image=mask_image,
                    strength=strength,
                    progress_callback=progress,
                )
            finally:
                # The wrapper registers a ctypes closure that dies when generate_image returns;
                # put our long-lived one back so the C side never holds a dangling pointer.
                self._sd_cpp.sd_set_progress_callback(self._callbacks[1], ctypes.c_void_p(0))
            elapsed = time.perf_counter() - started
        if len(images) != n:
            raise RuntimeError(f"stable-diffusion.cpp returned {len(images)} images instead of {n}")
        log.info("%d image(s) %dx%d, %d steps in %.2fs", n, width, height, steps, elapsed)
        return [_plain_rgb(im) for im in images], seed

    def close(self) -> None:
        with self._turns.lock:
            sd = getattr(self, "_sd", None)
            if sd is not None:
                sd.close()  # frees the native context now rather than at garbage collection
                self._sd = None


def _plain_rgb(image: Image.Image) -> Image.Image:
    # The wrapper leaves ctypes arrays in `info`, which would make the image unpicklable (it
    # could not travel back from a model worker) for metadata nobody reads.
    rgb = image.convert("RGB")
    rgb.info = {}
    return rgb


class Progress:
    """Logs sampling steps: every step at DEBUG, at most one INFO line a second plus the last.
    (The ONNX Stable Diffusion engine reports its steps through it too.)"""

    def __init__(self, name: str, logger: logging.Logger):
        self.name = name
        self.log = logger
        self.last = 0.0

    def __call__(self, step: int, steps: int, seconds: float) -> None:
        if step < 1:  # step 0 announces the start
            return
        now = time.monotonic()
        self.log.debug("%s: step %d/%d (%.2fs)", self.name, step, steps, seconds)
        if step >= steps or now - self.last >= 1.0:
            self.last = now
            self.log.info("%s: step %d/%d, %.2fs/step", self.name, step, steps, seconds)
