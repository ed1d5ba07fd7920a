"""Build a random-weight "SDXS (512-DS)" checkpoint that stable-diffusion.cpp loads and runs.

No package ships diffusion weights, and stable-diffusion.cpp hard-codes every layer size and picks
the model version from tensor names, so the smallest thing it accepts is a real architecture:
SDXS-512-DreamShaper's, with the CLIP ViT-L/14 text encoder (123M), the tiny UNet without a
middle block (316M) and TAESD as the VAE (2.4M), under the original LDM tensor names.

The names and shapes below mirror stable-diffusion.cpp's own module tree (vendored in the
stable-diffusion-cpp-python 0.4.7 sdist): `UnetModelBlock` in unet.hpp for VERSION_SDXS_512_DS
(which model.cpp detects from a 768-wide token embedding, no `middle_block.1` and no
`output_blocks.7.1`), `CLIPTextModel` in clip.hpp and `TAESD` in tae.hpp. The file is written
as f16 safetensors straight from numpy (883 MB, a few seconds); weights are small (std 0.02) so
activations stay finite through the random network.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

Shape = tuple[int, ...]

# ----------------------------------------------------------------------------- module helpers
# Each helper yields (name, shape, kind); kind is "w" (random), "one" (norm scale) or "zero".


def linear(name: str, n_in: int, n_out: int, bias: bool = True) -> Iterator[tuple[str, Shape, str]]:
    yield f"{name}.weight", (n_out, n_in), "w"
    if bias:
        yield f"{name}.bias", (n_out,), "zero"


def conv(name: str, n_in: int, n_out: int, k: int = 3, bias: bool = True) -> Iterator[tuple[str, Shape, str]]:
    yield f"{name}.weight", (n_out, n_in, k, k), "w"
    if bias:
        yield f"{name}.bias", (n_out,), "zero"


def norm(name: str, channels: int) -> Iterator[tuple[str, Shape, str]]:
    yield f"{name}.weight", (channels,), "one"
    yield f"{name}.bias", (channels,), "zero"


def resblock(name: str, ch: int, emb: int, out: int) -> Iterator[tuple[str, Shape, str]]:
    yield from norm(f"{name}.in_layers.0", ch)
    yield from conv(f"{name}.in_layers.2", ch, out)
    yield from linear(f"{name}.emb_layers.1", emb, out)
    yield from norm(f"{name}.out_layers.0", out)
    yield from conv(f"{name}.out_layers.3", out, out)
    if ch != out:
        yield from conv(f"{name}.skip_connection", ch, out, k=1)


def spatial_transformer(name: str, ch: int, context: int) -> Iterator[tuple[str, Shape, str]]:
    # SD1 style: proj_in/proj_out are 1x1 convolutions; one transformer block; GEGLU feed-forward.
    yield from norm(f"{name}.norm", ch)
    yield from conv(f"{name}.proj_in", ch, ch, k=1)
    block = f"{name}.transformer_blocks.0"
    for attn, kv_dim in (("attn1", ch), ("attn2", context)):
        yield from linear(f"{block}.{attn}.to_q", ch, ch, bias=False)
        yield from linear(f"{block}.{attn}.to_k", kv_dim, ch, bias=False)
        yield from linear(f"{block}.{attn}.to_v", kv_dim, ch, bias=False)
        yield from linear(f"{block}.{attn}.to_out.0", ch, ch)
    yield from linear(f"{block}.ff.net.0.proj", ch, ch * 4 * 2)
    yield from linear(f"{block}.ff.net.2", ch * 4, ch)
    for i in (1, 2, 3):
        yield from norm(f"{block}.norm{i}", ch)
    yield from conv(f"{name}.proj_out", ch, ch, k=1)


# ----------------------------------------------------------------------------- the three models


def unet(prefix: str = "model.diffusion_model") -> Iterator[tuple[str, Shape, str]]:
    """UnetModelBlock(VERSION_SDXS_512_DS): channel_mult (1, 2, 4), one res block per level,
    attention at downsampling 2 and 4, 8 heads, context 768, and no middle block."""
    mc, emb, ctx = 320, 1280, 768
    p = prefix
    yield from linear(f"{p}.time_embed.0", mc, emb)
    yield from linear(f"{p}.time_embed.2", emb, emb)
    yield from conv(f"{p}.input_blocks.0.0", 4, mc)
    # Input side (the tiny UNet skips one index after each res block, as the C++ does).
    yield from resblock(f"{p}.input_blocks.1.0", mc, emb, mc)
    yield from conv(f"{p}.input_blocks.3.0.op", mc, mc)
    yield from resblock(f"{p}.input_blocks.4.0", mc, emb, 2 * mc)
    yield from spatial_transformer(f"{p}.input_blocks.4.1", 2 * mc, ctx)
    yield from conv(f"{p}.input_blocks.6.0.op", 2 * mc, 2 * mc)
    yield from resblock(f"{p}.input_blocks.7.0", 2 * mc, emb, 4 * mc)
    yield from spatial_transformer(f"{p}.input_blocks.7.1", 4 * mc, ctx)
    # Output side: skip connections concatenate the input side's channels (320,320,320,640,640,1280).
    yield from resblock(f"{p}.output_blocks.0.0", 4 * mc + 4 * mc, emb, 4 * mc)
    yield from spatial_transformer(f"{p}.output_blocks.0.1", 4 * mc, ctx)
    yield from resblock(f"{p}.output_blocks.1.0", 4 * mc + 2 * mc, emb, 4 * mc)
    yield from spatial_transformer(f"{p}.output_blocks.1.1", 4 * mc, ctx)
    yield from conv(f"{p}.output_blocks.2.1.conv", 4 * mc, 4 * mc)
    yield from resblock(f"{p}.output_blocks.3.0", 4 * mc + 2 * mc, emb, 2 * mc)
    yield from spatial_transformer(f"{p}.output_blocks.3.1", 2 * mc, ctx)
    yield from resblock(f"{p}.output_blocks.4.0", 2 * mc + mc, emb, 2 * mc)
    yield from spatial_transformer(f"{p}.output_blocks.4.1", 2 * mc, ctx)
    yield from conv(f"{p}.output_blocks.5.2.conv", 2 * mc, 2 * mc)
    yield from resblock(f"{p}.output_blocks.6.0", 2 * mc + mc, emb, mc)
    yield from resblock(f"{p}.output_blocks.7.0", mc + mc, emb, mc)
    yield from norm(f"{p}.out.0", mc)
    yield from conv(f"{p}.out.2", mc, 4)


def clip_text(prefix: str = "cond_stage_model.transformer.text_model") -> Iterator[tuple[str, Shape, str]]:
    """CLIPTextModel(OPENAI_CLIP_VIT_L_14): 12 layers, width 768, 12 heads, MLP 3072."""
    d, mlp = 768, 3072
    yield f"{prefix}.embeddings.token_embedding.weight", (49408, d), "w"
    yield f"{prefix}.embeddings.position_embedding.weight", (77, d), "w"
    for i in range(12):
        layer = f"{prefix}.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            yield from linear(f"{layer}.self_attn.{proj}", d, d)
        yield from norm(f"{layer}.layer_norm1", d)
        yield from norm(f"{layer}.layer_norm2", d)
        yield from linear(f"{layer}.mlp.fc1", d, mlp)
        yield from linear(f"{layer}.mlp.fc2", mlp, d)
    yield from norm(f"{prefix}.final_layer_norm", d)


def _tae_block(name: str, ch: int = 64) -> Iterator[tuple[str, Shape, str]]:
    for i in (0, 2, 4):
        yield from conv(f"{name}.conv.{i}", ch, ch)


def taesd(prefix: str = "tae") -> Iterator[tuple[str, Shape, str]]:
    """TAESD (tae.hpp): 64 channels, 4 latent channels. SDXS uses it as its only VAE; the
    encoder is needed for img2img."""
    dec = f"{prefix}.decoder.layers"
    yield from conv(f"{dec}.0", 4, 64)
    for i in (2, 3, 4, 7, 8, 9, 12, 13, 14, 17):
        yield from _tae_block(f"{dec}.{i}")
    for i in (6, 11, 16):  # after each nn.Upsample: a bias-free conv
        yield from conv(f"{dec}.{i}", 64, 64, bias=False)
    yield from conv(f"{dec}.18", 64, 3)
    enc = f"{prefix}.encoder.layers"
    yield from conv(f"{enc}.0", 3, 64)
    for i in (1, 3, 4, 5, 7, 8, 9, 11, 12, 13):
        yield from _tae_block(f"{enc}.{i}")
    for i in (2, 6, 10):  # stride-2 bias-free downsampling convs
        yield from conv(f"{enc}.{i}", 64, 64, bias=False)
    yield from conv(f"{enc}.14", 64, 4)


def tensors() -> list[tuple[str, Shape, str]]:
    return [*clip_text(), *unet(), *taesd()]


# With small weights the decoded image is near black with differences below one grey level, so
# the decoder's last convolution gets a large gain and a mid-grey bias: pictures then span the
# whole range and "these two images differ" is visible in 8-bit pixels.
GAIN = {"tae.decoder.layers.18.weight": 100.0, "tae.encoder.layers.14.weight": 100.0}
FILL = {"tae.decoder.layers.18.bias": 0.5}


# ----------------------------------------------------------------------------- writing


def write_checkpoint(path: Path, seed: int = 0, std: float = 0.02) -> Path:
    """Write the checkpoint as f16 safetensors (atomically: a crash leaves no half file)."""
    specs = tensors()
    header: dict[str, object] = {"__metadata__": {"format": "pt", "note": "random-weight SDXS-512-DS for tests"}}
    offset = 0
    for name, shape, _ in specs:
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, kind in specs:
            if kind == "w":
                data = rng.standard_normal(shape, dtype=np.float32) * (std * GAIN.get(name, 1.0))
            else:
                data = np.full(shape, FILL.get(name, 1.0 if kind == "one" else 0.0), dtype=np.float32)
            f.write(data.astype("<f2").tobytes())
    tmp.replace(path)
    return path


def ensure_checkpoint(cache_dir: Path) -> Path:
    """The checkpoint in `cache_dir`, written on first use (never committed: it is 883 MB)."""
    path = cache_dir / "sdxs-512-ds-random-v3-f16.safetensors"
    expected = 8 + sum(int(np.prod(s)) * 2 for _, s, _ in tensors())
    if not path.exists() or path.stat().st_size < expected:
        write_checkpoint(path)
    return path


if __name__ == "__main__":  # pragma: no cover - manual use: python tests/sdxs_checkpoint.py OUT
    import sys

    out = write_checkpoint(Path(sys.argv[1] if len(sys.argv) > 1 else "sdxs-random.safetensors"))
    print(out, sum(int(np.prod(s)) for _, s, _ in tensors()) / 1e6, "M params")
