"""Image generation settings without a model: split checkpoints map to stable-diffusion.cpp's
loader arguments, and the image flags of the command line."""

from __future__ import annotations

import os
from pathlib import Path

from nexa.cli import build_parser, settings_from_args
from nexa.config import Settings
from nexa.engines.loader import diffusion_arguments as load_arguments
from nexa.models.types import ModelType, ResolvedModel


def test_split_checkpoints_map_to_the_right_loader_arguments(tmp_path: Path) -> None:
    def model(**extra: str) -> ResolvedModel:
        files = {k: Path(v) for k, v in extra.items()}
        return ResolvedModel("m", tmp_path / "m.gguf", ModelType.COMPUTER_VISION, extra_files=files)

    settings = Settings(n_threads=3)
    plain = load_arguments(model(), settings)
    assert plain["model_path"].endswith("m.gguf") and plain["n_threads"] == 3 and plain["vae_decode_only"] is False
    flux = load_arguments(model(t5xxl="t5.gguf", clip_l="clip_l.safetensors", vae="ae.safetensors"), settings)
    assert flux["diffusion_model_path"].endswith("m.gguf") and "model_path" not in flux
    assert flux["t5xxl_path"] == "t5.gguf" and flux["vae_path"] == "ae.safetensors"
    sd3 = load_arguments(model(t5xxl="t5", clip_l="l", clip_g="g"), settings)
    assert sd3["model_path"].endswith("m.gguf") and sd3["clip_g_path"] == "g"


def test_cli_image_flags(tmp_path: Path) -> None:
    args = build_parser().parse_args([
        "server", "m.gguf", "-lp", "-mt", "COMPUTER_VISION", "--output-dir", str(tmp_path / "out"),
        "--allow-dir", str(tmp_path), "--allow-dir", ".", "--max-image-size", "512", "--max-images", "2",
    ])
    s = settings_from_args(args)
    assert s.image_output_dir == str(tmp_path / "out")
    assert s.allowed_image_dirs == [str(tmp_path), os.path.abspath(".")]
    assert (s.max_image_size, s.max_images_n, s.max_image_steps) == (512, 2, 100)
    assert Settings().allowed_image_dirs == []  # nothing readable by default
