"""Euler and Euler-ancestral sampling in numpy, as diffusers' EulerDiscreteScheduler and
EulerAncestralDiscreteScheduler compute them from a pipeline's scheduler/scheduler_config.json.

The noise schedule (betas, timestep spacing, prediction type) is the model's own; the samplers
themselves are the two k-diffusion steps. Other schedulers a pipeline names (PNDM, DDIM, LMS,
DPM-Solver...) run as Euler over the same schedule: the model was trained on the schedule, not on
the solver, and Euler is what diffusers itself swaps in most often.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

log = logging.getLogger("nexa.engine.onnx.diffusion")

EULER = "euler"
EULER_A = "euler_a"
SAMPLERS = (EULER, EULER_A)
# diffusers scheduler class -> our sampler; any other class runs as Euler (logged at load).
_OWN = {"EulerDiscreteScheduler": EULER, "EulerAncestralDiscreteScheduler": EULER_A}


def sampler_for(config: dict[str, Any]) -> str:
    """The sampler a scheduler_config.json asks for, or Euler with a log line saying so."""
    name = str(config.get("_class_name", ""))
    if name in _OWN:
        return _OWN[name]
    log.info("scheduler %s runs as %s over the model's noise schedule (samplers here: %s)",
             name or "(unnamed)", EULER, ", ".join(SAMPLERS))
    return EULER


class Schedule:
    """A model's noise schedule: its timesteps and sigmas for a number of steps."""

    def __init__(self, config: dict[str, Any]):
        self.train_steps = int(config.get("num_train_timesteps", 1000))
        self.spacing = str(config.get("timestep_spacing") or "linspace")  # Euler's default, as diffusers'
        self.offset = int(config.get("steps_offset", 0))
        self.prediction = str(config.get("prediction_type", "epsilon"))
        if self.prediction not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {self.prediction!r} (this server runs epsilon and v_prediction)")
        if self.spacing not in ("linspace", "leading", "trailing"):
            raise ValueError(f"timestep_spacing {self.spacing!r} (this server runs linspace, leading and trailing)")
        if config.get("use_karras_sigmas"):
            log.info("use_karras_sigmas is ignored: the sigmas follow the model's timesteps")
        alphas_cumprod = np.cumprod(1.0 - _betas(config, self.train_steps), dtype=np.float32)
        self.train_sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5

    def timesteps(self, steps: int) -> np.ndarray:
        """The model's timesteps for `steps` steps, from the noisiest (float, as diffusers' Euler has them)."""
        n = self.train_steps
        if self.spacing == "linspace":
            return np.linspace(0, n - 1, steps, dtype=np.float32)[::-1].copy()
        if self.spacing == "leading":
            ratio = n // steps
            return (np.arange(0, steps) * ratio).round()[::-1].astype(np.float32) + self.offset
        return np.arange(n, 0, -n / steps).round().astype(np.float32) - 1  # trailing

    def sigmas(self, timesteps: np.ndarray) -> np.ndarray:
        """The noise level at each timestep, then 0 (the clean image)."""
        sigmas = np.interp(timesteps, np.arange(len(self.train_sigmas)), self.train_sigmas)
        return np.concatenate([sigmas, [0.0]]).astype(np.float32)

    def init_noise_sigma(self, sigmas: np.ndarray) -> float:
        top = float(sigmas.max())
        return top if self.spacing in ("linspace", "trailing") else math.sqrt(top**2 + 1)

    def denoised(self, model_output: np.ndarray, sample: np.ndarray, sigma: float) -> np.ndarray:
        """The model's estimate of the clean latents."""
        if self.prediction == "epsilon":
            return sample - sigma * model_output
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)


def step(
    sampler: str, schedule: Schedule, model_output: np.ndarray, sample: np.ndarray, sigma: float, sigma_next: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One step from `sigma` to `sigma_next` (diffusers' `step` with its default churn of 0)."""
    derivative = (sample - schedule.denoised(model_output, sample, sigma)) / sigma
    if sampler == EULER:
        return (sample + derivative * (sigma_next - sigma)).astype(np.float32)
    # Ancestral: step down past sigma_next, then add fresh noise back up to it.
    sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    noise = rng.standard_normal(sample.shape, dtype=np.float32)
    return (sample + derivative * (sigma_down - sigma) + noise * sigma_up).astype(np.float32)


def _betas(config: dict[str, Any], n: int) -> np.ndarray:
    if config.get("trained_betas"):
        return np.asarray(config["trained_betas"], dtype=np.float32)
    start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    kind = config.get("beta_schedule", "linear")
    if kind == "linear":
        return np.linspace(start, end, n, dtype=np.float32)
    if kind == "scaled_linear":  # Stable Diffusion's
        return (np.linspace(start**0.5, end**0.5, n, dtype=np.float32) ** 2).astype(np.float32)
    if kind == "squaredcos_cap_v2":  # Glide's cosine schedule
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], np.float32)
    raise ValueError(f"beta_schedule {kind!r} (this server runs linear, scaled_linear and squaredcos_cap_v2)")
