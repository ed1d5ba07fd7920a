"""Build a random-weight Stable Diffusion pipeline in the ONNX layout that diffusers and optimum
export (`optimum-cli export onnx --model runwayml/stable-diffusion-v1-5 OUT`), into a cache
(<cache root>/test-models) so reruns are instant:

    model_index.json
    text_encoder/model.onnx + config.json     CLIPTextModel: input_ids (int32) -> last_hidden_state
    unet/model.onnx + config.json             UNet2DConditionModel: sample, timestep, encoder_hidden_states
    vae_decoder/model.onnx + config.json      AutoencoderKL decoder: latent_sample -> sample
    vae_encoder/model.onnx + config.json      AutoencoderKL encoder: sample -> latent_parameters (mean, logvar)
    tokenizer/vocab.json, merges.txt, ...     a CLIP byte-level BPE (trained here on a few sentences)
    scheduler/scheduler_config.json           SD 1.5's PNDM configuration

The architecture is SD 1.x's (CLIP text encoder, a UNet with cross-attention, a 4-level VAE:
latents are 1/8 of the image, 4 channels, scaling 0.18215), shrunk the way diffusers' own tests
shrink it (hf-internal-testing's tiny SD): outputs are noise, the path is the real one, and
diffusers' OnnxStableDiffusionPipeline loads the folder too. Builds in seconds; about 5 MB.

torch, transformers and diffusers are build-time tools (the `test` extra); the server never needs them.

Usage: python tests/onnx_diffusion.py   (builds it and prints the folder)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from minilm_gguf import cache_dir
from onnx_models import _replace_dir

log = logging.getLogger("tests.onnx_diffusion")

SD_TINY_ONNX = "sd-tiny-random-onnx-v1"  # bump when the builder changes
SEED = 0
MAX_LENGTH = 77  # CLIP's context, as in every SD 1.x/2.x tokenizer
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# Text the tokenizer's merges are learned from: prompts like the tests' own.
_CORPUS = [
    "a red fox in the snow", "a lighthouse on a cliff at sunset", "a painting of a cat", "a tree by the river",
    "a photo of an astronaut riding a horse on the moon", "portrait of a woman, oil painting, detailed",
    "a city street at night in the rain", "a bowl of fruit on a wooden table", "mountains and a lake",
    "the quick brown fox jumps over the lazy dog", "a dog playing in the park", "a small boat on the sea",
]

UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
)
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(16, 16, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8,
    sample_size=128,
)
TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=MAX_LENGTH, projection_dim=32)
# runwayml/stable-diffusion-v1-5's scheduler/scheduler_config.json.
SCHEDULER = {
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "trained_betas": None, "clip_sample": False,
}


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values, in their order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def write_tokenizer(out: Path) -> dict[str, int]:
    """A CLIP tokenizer folder (vocab.json, merges.txt and configs) laid out as openai/clip-vit-large-patch14's:
    the 256 byte symbols, the same with `</w>`, the learned merges, then the two special tokens."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    trainer_tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    trainer_tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=700, min_frequency=1, end_of_word_suffix="</w>",
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    trainer_tok.train_from_iterator(_CORPUS, trainer)
    learned = json.loads(trainer_tok.to_str())["model"]["merges"]
    merges = [m if isinstance(m, list) else m.split(" ") for m in learned]

    symbols = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for token in [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), BOS, EOS]:
        vocab.setdefault(token, len(vocab))
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "do_lower_case": True,
              "errors": "replace", **specials}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return vocab


def _export(model: Any, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            axes: dict[str, dict[int, str]]) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(model, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=17, dynamo=False)


def build(out: Path) -> Path:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    vocab = write_tokenizer(tmp / "tokenizer")
    torch.manual_seed(SEED)

    text_config = CLIPTextConfig(vocab_size=len(vocab), bos_token_id=vocab[BOS], eos_token_id=vocab[EOS],
                                 pad_token_id=vocab[EOS], **TEXT)
    text = CLIPTextModel(text_config).eval()

    class TextEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.text = text

        def forward(self, input_ids):  # type: ignore[no-untyped-def]
            out = self.text(input_ids=input_ids)
            return out.last_hidden_state, out.pooler_output

    ids = torch.full((1, MAX_LENGTH), vocab[EOS], dtype=torch.int32)
    ids[0, 0] = vocab[BOS]
    _export(TextEncoder().eval(), (ids,), tmp / "text_encoder" / "model.onnx", ["input_ids"],
            ["last_hidden_state", "pooler_output"],
            {"input_ids": {0: "batch_size", 1: "sequence_length"}, "last_hidden_state": {0: "batch_size"}})
    text_config.save_pretrained(tmp / "text_encoder")

    unet = UNet2DConditionModel(**UNET).eval()

    class Unet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):  # type: ignore[no-untyped-def]
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    sample = torch.randn(2, 4, 16, 16)
    _export(Unet().eval(), (sample, torch.tensor([999.0]), torch.randn(2, MAX_LENGTH, TEXT["hidden_size"])),
            tmp / "unet" / "model.onnx", ["sample", "timestep", "encoder_hidden_states"], ["out_sample"],
            {"sample": {0: "batch_size", 2: "height", 3: "width"}, "timestep": {0: "steps"},
             "encoder_hidden_states": {0: "batch_size", 1: "sequence_length"},
             "out_sample": {0: "batch_size", 2: "height", 3: "width"}})
    unet.save_config(tmp / "unet")

    vae = AutoencoderKL(**VAE).eval()

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, latent_sample):  # type: ignore[no-untyped-def]
            return self.vae.decode(latent_sample, return_dict=False)[0]

    class Encoder(torch.nn.Module):  # the distribution's parameters, as optimum exports it: sampling is the caller's
        def __init__(self) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, sample):  # type: ignore[no-untyped-def]
            return self.vae.encode(sample, return_dict=False)[0].parameters

    image_axes = {0: "batch_size", 2: "height", 3: "width"}
    _export(Decoder().eval(), (torch.randn(1, 4, 16, 16),), tmp / "vae_decoder" / "model.onnx", ["latent_sample"],
            ["sample"], {"latent_sample": image_axes, "sample": image_axes})
    _export(Encoder().eval(), (torch.randn(1, 3, 128, 128),), tmp / "vae_encoder" / "model.onnx", ["sample"],
            ["latent_parameters"], {"sample": image_axes, "latent_parameters": image_axes})
    for part in ("vae_decoder", "vae_encoder"):
        vae.save_config(tmp / part)

    (tmp / "scheduler").mkdir()
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2))
    index = {
        "_class_name": "OnnxStableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["diffusers", "OnnxRuntimeModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "OnnxRuntimeModel"],
        "vae_decoder": ["diffusers", "OnnxRuntimeModel"], "vae_encoder": ["diffusers", "OnnxRuntimeModel"],
    }
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    _replace_dir(tmp, out)
    return out


def sd_tiny_onnx() -> Path:
    """The tiny random Stable Diffusion ONNX pipeline folder, built on first use."""
    out = cache_dir() / SD_TINY_ONNX
    if not (out / "model_index.json").is_file():
        log.info("building %s", out)
        build(out)
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(sd_tiny_onnx())
