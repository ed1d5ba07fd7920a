"""Stable Diffusion (1.x/2.x) on onnxruntime: txt2img and img2img from a diffusers/optimum ONNX
pipeline folder (model_index.json, text_encoder/, unet/, vae_decoder/, vae_encoder/, tokenizer/,
scheduler/), with numpy doing the rest: CLIP tokens (`tokenizers`), classifier-free guidance,
the Euler samplers (samplers.py) and seeded noise.

The same `generate(...)` as the stable-diffusion.cpp engine (engines/diffusion.py), so the image
endpoints serve either unchanged. Image i of a request uses seed + i, so one image of a batch
can be made again alone. Generations take turns on the model, as there.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from nexa.config import default
from nexa.engines.base import Engine, Task, Turns
from nexa.engines.diffusion import MAX_SEED, Progress
from nexa.engines.onnx import samplers
from nexa.engines.onnx.runtime import cpu_session
from nexa.errors import InvalidRequest, StartupError

log = logging.getLogger("nexa.engine.onnx.diffusion")

PARTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int32)": np.int32, "tensor(int64)": np.int64}
# SD 1.x's, for folders exported without the VAE's config.json (diffusers' own converter wrote none).
DEFAULT_SCALING = 0.18215
DEFAULT_VAE_FACTOR = 8


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise StartupError(f"{path} cannot be read as JSON: {exc}") from None


def initial_noise(seed: int, shape: tuple[int, ...]) -> tuple[np.random.Generator, np.ndarray]:
    """The seeded generator of one image and its starting noise (the first draw)."""
    rng = np.random.default_rng(seed)
    return rng, rng.standard_normal(shape, dtype=np.float32)


class ClipTokenizer:
    """CLIP's byte-level BPE from tokenizer/vocab.json + merges.txt, built as transformers'
    CLIPTokenizerFast builds it; ids are padded (or cut) to the text encoder's length."""

    def __init__(self, folder: Path, max_length: int):
        from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

        vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
        if not (vocab_path.is_file() and merges_path.is_file()):
            raise StartupError(f"{folder} needs CLIP's vocab.json and merges.txt")
        vocab: dict[str, int] = json.loads(vocab_path.read_text(encoding="utf-8"))
        lines = merges_path.read_text(encoding="utf-8").splitlines()
        pairs = [line.split(" ", 1) for line in lines if line and not line.startswith("#version")]
        merges = [(a, b) for a, b in pairs]
        specials = {**_json(folder / "special_tokens_map.json"), **_json(folder / "tokenizer_config.json")}

        def special(key: str, fallback: str) -> int:
            value = specials.get(key) or fallback
            token = value.get("content", fallback) if isinstance(value, dict) else str(value)
            if token not in vocab:
                raise StartupError(f"{folder}: the {key} {token!r} is not in vocab.json")
            return vocab[token]

        self.bos, self.eos = special("bos_token", "<|startoftext|>"), special("eos_token", "<|endoftext|>")
        self.pad = special("pad_token", "<|endoftext|>")  # SD 1.x pads with end-of-text, SD 2.x with "!"
        unk = specials.get("unk_token") or "<|endoftext|>"
        self.max_length = min(max_length, int(specials.get("model_max_length") or max_length))
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk if isinstance(unk, str) else None,
                                   end_of_word_suffix="</w>", continuing_subword_prefix="", fuse_unk=False))
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                                 behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
        tok.decoder = decoders.ByteLevel()
        self._tok = tok

    def __call__(self, text: str) -> np.ndarray:
        """[BOS, tokens..., EOS, PAD...]: one row of max_length ids; a longer prompt is cut, as diffusers does."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        room = self.max_length - 2
        if len(ids) > room:
            log.info("prompt cut to the text encoder's %d tokens (%d given)", self.max_length, len(ids) + 2)
            ids = ids[:room]
        row = [self.bos, *ids, self.eos]
        return np.array([row + [self.pad] * (self.max_length - len(row))], dtype=np.int64)


class OnnxDiffusionEngine(Engine):
    tasks = frozenset({Task.TXT2IMG, Task.IMG2IMG})

    def __init__(self, folder: Path, *, name: str, n_threads: int = default("n_threads"),
                 max_queue: int = default("max_queue")):

        self.name = name
        self.path = Path(folder)
        started = time.perf_counter()
        self._sessions: dict[str, Any] = {  # deterministic: same seed, same pixels
            part: cpu_session(self.path / part / "model.onnx", n_threads, deterministic=True) for part in PARTS
        }
        self._check_unet()
        vae = _json(self.path / "vae_decoder" / "config.json")
        self.scaling = float(vae.get("scaling_factor") or DEFAULT_SCALING)
        self.shift = float(vae.get("shift_factor") or 0.0)
        blocks = vae.get("block_out_channels")
        self.vae_factor = 2 ** (len(blocks) - 1) if blocks else DEFAULT_VAE_FACTOR
        self.latent_channels = int(vae.get("latent_channels") or 4)
        text = _json(self.path / "text_encoder" / "config.json")
        self.tokenizer = ClipTokenizer(self.path / "tokenizer", int(text.get("max_position_embeddings") or 77))
        scheduler = _json(self.path / "scheduler" / "scheduler_config.json")
        try:
            self.schedule = samplers.Schedule(scheduler)
        except ValueError as exc:
            raise StartupError(f"{self.path / 'scheduler' / 'scheduler_config.json'}: unsupported {exc}") from None
        self.default_sampler = samplers.sampler_for(scheduler)
        self._turns = Turns(max_queue)
        log.info(
            "loaded %s in %.1fs (latents %d channels at 1/%d, scaling %g, sampler %s, %d threads)",
            self.path.name, time.perf_counter() - started, self.latent_channels, self.vae_factor, self.scaling,
            self.default_sampler, n_threads,
        )

    def _check_unet(self) -> None:
        inputs = {i.name: i for i in self._sessions["unet"].get_inputs()}
        extra = sorted(set(inputs) - {"sample", "timestep", "encoder_hidden_states"})
        if extra or "sample" not in inputs:
            why = "an SDXL UNet" if "text_embeds" in inputs else "a UNet with other inputs"
            raise StartupError(
                f"{self.path / 'unet' / 'model.onnx'} is {why} (inputs: {', '.join(sorted(inputs))}); the ONNX "
                f"variant runs Stable Diffusion 1.x/2.x pipelines (sample, timestep, encoder_hidden_states)."
            )
        channels = inputs["sample"].shape[1]
        if isinstance(channels, int) and channels != 4:
            raise StartupError(
                f"{self.path / 'unet' / 'model.onnx'} takes {channels} latent channels (an inpainting or other "
                f"special UNet); the ONNX variant runs the plain text-to-image UNet (4 channels)."
            )

    def describe(self) -> dict[str, Any]:
        return {"samplers": list(samplers.SAMPLERS), "sampler": self.default_sampler, "runtime": "onnxruntime"}

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

        With `init_image` this is img2img: `strength` 0 keeps the image, 1 replaces it; a mask
        (white: repaint) keeps the rest of the image. Blocking: call it from a worker thread.
        """
        if sampler is not None and sampler not in samplers.SAMPLERS:
            choices = ", ".join(samplers.SAMPLERS)
            raise InvalidRequest(f"Unknown sampler {sampler!r}: use one of {choices}.", param="sampler")
        if width % self.vae_factor or height % self.vae_factor:
            raise InvalidRequest(f"width and height must be multiples of {self.vae_factor}.", param="width")
        if seed < 0:
            seed = random.randint(0, MAX_SEED)
        job = _Job(sampler or self.default_sampler, width, height, cfg_scale, steps, strength, Progress(self.name, log))
        with self._turns():
            if not self._sessions:
                raise RuntimeError("the model has been closed")
            started = time.perf_counter()
            # Guidance runs the UNet on [unconditioned, conditioned] together; at cfg_scale <= 1
            # it would change nothing, so only the prompt is run (as diffusers does).
            texts = [negative_prompt, prompt] if cfg_scale > 1 else [prompt]
            job.context = np.concatenate([self._encode_text(t) for t in texts])
            if init_image is not None:
                job.pixels = _pixels(init_image, width, height)
                if mask_image is not None:
                    size = (width // self.vae_factor, height // self.vae_factor)
                    mask = np.asarray(mask_image.convert("L").resize(size, Image.Resampling.BILINEAR), np.float32)
                    job.mask = (mask / 255.0)[None, None]
            images = [self._image(job, seed + i) for i in range(n)]
            elapsed = time.perf_counter() - started
        log.info("%d image(s) %dx%d, %d steps (%s) in %.2fs", n, width, height, steps, job.sampler, elapsed)
        return images, seed

    def close(self) -> None:
        with self._turns.lock:
            self._sessions = {}

    # -- one image ---------------------------------------------------------------------------

    def _image(self, job: _Job, seed: int) -> Image.Image:
        shape = (1, self.latent_channels, job.height // self.vae_factor, job.width // self.vae_factor)
        rng, noise = initial_noise(seed, shape)
        timesteps = self.schedule.timesteps(job.steps)
        sigmas = self.schedule.sigmas(timesteps)
        start, clean = 0, None
        if job.pixels is None:
            latents = noise * np.float32(self.schedule.init_noise_sigma(sigmas))
        else:
            clean = self._encode_image(job.pixels, rng)
            # As diffusers' img2img: strength says how many of the steps run, the last ones.
            start = job.steps - min(int(job.steps * job.strength), job.steps)
            latents = clean + noise * sigmas[start]
        total = job.steps - start
        for i in range(start, job.steps):
            began = time.perf_counter()
            latents = self._step(job, latents, timesteps[i], float(sigmas[i]), float(sigmas[i + 1]), rng)
            if job.mask is not None and clean is not None:
                # Outside the mask the input stays, noised to the level the sampler has reached.
                latents = job.mask * latents + (1 - job.mask) * (clean + noise * sigmas[i + 1])
            job.progress(i - start + 1, total, time.perf_counter() - began)
        return self._decode(latents)

    def _step(self, job: _Job, latents: np.ndarray, t: float, sigma: float, sigma_next: float,
              rng: np.random.Generator) -> np.ndarray:
        scaled = latents / np.float32((sigma**2 + 1) ** 0.5)
        guided = len(job.context) == 2
        batch = np.concatenate([scaled, scaled]) if guided else scaled
        unet = self._sessions["unet"]
        kind = _input_type(unet, "timestep")
        timestep = np.array([t], dtype=kind) if np.issubdtype(kind, np.floating) else np.array([round(t)], dtype=kind)
        out = self._run("unet", sample=batch, timestep=timestep, encoder_hidden_states=job.context)
        if guided:
            uncond, cond = out[0:1], out[1:2]
            out = uncond + np.float32(job.cfg_scale) * (cond - uncond)
        return samplers.step(job.sampler, self.schedule, out, latents, sigma, sigma_next, rng)

    # -- the three networks around the UNet ----------------------------------------------------

    def _encode_text(self, text: str) -> np.ndarray:
        return self._run("text_encoder", input_ids=self.tokenizer(text))

    def _encode_image(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = self._run("vae_encoder", sample=pixels)
        if out.shape[1] == 2 * self.latent_channels:  # the distribution's mean and log-variance (optimum)
            mean, logvar = np.split(out, 2, axis=1)
            std = np.exp(0.5 * np.clip(logvar, -30.0, 20.0))
            out = mean + std * rng.standard_normal(mean.shape, dtype=np.float32)
        # Else a latent already sampled in the graph (diffusers' old converter, older optimum exports),
        # with onnxruntime's own unseeded noise: such img2img results vary from run to run.
        return ((out - self.shift) * self.scaling).astype(np.float32)

    def _decode(self, latents: np.ndarray) -> Image.Image:
        image = self._run("vae_decoder", latent_sample=latents / np.float32(self.scaling) + np.float32(self.shift))
        rgb = np.clip(image[0].transpose(1, 2, 0) / 2 + 0.5, 0.0, 1.0)
        return Image.fromarray((rgb * 255).round().astype(np.uint8), "RGB")

    def _run(self, part: str, **feeds: np.ndarray) -> np.ndarray:
        """The part's first output as float32; inputs cast to the types the graph declares
        (exports differ: int32 or int64 ids, float16 weights with --fp16)."""
        session = self._sessions[part]
        cast = {name: value.astype(_input_type(session, name), copy=False) for name, value in feeds.items()}
        return np.asarray(session.run(None, cast)[0], dtype=np.float32)


class _Job:
    """One request's settings and what was prepared for it once (prompt states, input image, mask)."""

    def __init__(self, sampler: str, width: int, height: int, cfg_scale: float, steps: int, strength: float,
                 progress: Progress):
        self.sampler, self.width, self.height = sampler, width, height
        self.cfg_scale, self.steps, self.strength, self.progress = cfg_scale, steps, strength, progress
        self.context = np.zeros((0,), np.float32)
        self.pixels: np.ndarray | None = None
        self.mask: np.ndarray | None = None


def _input_type(session: Any, name: str) -> Any:
    kind = next((i.type for i in session.get_inputs() if i.name == name), "tensor(float)")
    return _ORT_TYPES.get(kind, np.float32)


def _pixels(image: Image.Image, width: int, height: int) -> np.ndarray:
    """An input image as the VAE takes it: the requested size, RGB in [-1, 1], NCHW."""
    rgb = image.convert("RGB")
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.LANCZOS)
    array = np.asarray(rgb, np.float32) / 127.5 - 1.0
    return array.transpose(2, 0, 1)[None]
