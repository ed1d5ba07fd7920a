"""The numpy Euler samplers of the ONNX Stable Diffusion engine against diffusers' own schedulers:
the same timesteps, sigmas, starting noise scale and steps for every spacing and prediction type."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import torch

from nexa.engines.onnx import samplers

SD15 = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "steps_offset": 1, "set_alpha_to_one": False, "skip_prk_steps": True}


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("betas", ["scaled_linear", "linear", "squaredcos_cap_v2"])
def test_euler_matches_diffusers(spacing: str, prediction: str, betas: str) -> None:
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

    config: dict[str, Any] = {**SD15, "timestep_spacing": spacing, "prediction_type": prediction,
                              "beta_schedule": betas}
    ours = samplers.Schedule(config)
    rng = np.random.default_rng(0)
    for steps in (1, 4, 25):
        theirs = EulerDiscreteScheduler.from_config(config)
        theirs.set_timesteps(steps)
        timesteps = ours.timesteps(steps)
        sigmas = ours.sigmas(timesteps)
        np.testing.assert_allclose(timesteps, theirs.timesteps.numpy(), rtol=1e-6)
        np.testing.assert_allclose(sigmas, theirs.sigmas.numpy(), rtol=1e-4)  # float32 either way
        assert ours.init_noise_sigma(sigmas) == pytest.approx(float(theirs.init_noise_sigma), rel=1e-4)
        sample = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
        output = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
        i = steps // 2
        t = theirs.timesteps[i]
        theirs._step_index, theirs.is_scale_input_called = i, True  # the model input is not ours to check
        expected = theirs.step(torch.from_numpy(output), t, torch.from_numpy(sample)).prev_sample.numpy()
        got = samplers.step(samplers.EULER, ours, output, sample, float(sigmas[i]), float(sigmas[i + 1]), rng)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        # The ancestral step adds no noise on its way to sigma 0, so the last one is comparable exactly.
        ancestral = EulerAncestralDiscreteScheduler.from_config(config)
        ancestral.set_timesteps(steps)
        ancestral._step_index, ancestral.is_scale_input_called = steps - 1, True
        last = ancestral.timesteps[-1]
        expected = ancestral.step(torch.from_numpy(output), last, torch.from_numpy(sample)).prev_sample.numpy()
        got = samplers.step(samplers.EULER_A, ours, output, sample, float(sigmas[-2]), 0.0, rng)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_the_scheduler_a_pipeline_names_picks_the_sampler(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nexa.engine.onnx.diffusion")
    assert samplers.sampler_for({"_class_name": "EulerAncestralDiscreteScheduler"}) == samplers.EULER_A
    assert samplers.sampler_for({"_class_name": "EulerDiscreteScheduler"}) == samplers.EULER
    assert not caplog.records
    assert samplers.sampler_for(SD15) == samplers.EULER
    assert "PNDMScheduler runs as euler" in caplog.text


def test_unknown_schedules_are_refused() -> None:
    for bad in ({"prediction_type": "sample"}, {"timestep_spacing": "karras"}, {"beta_schedule": "sigmoid"}):
        with pytest.raises(ValueError, match=next(iter(bad.values()))):
            samplers.Schedule({**SD15, **bad})
