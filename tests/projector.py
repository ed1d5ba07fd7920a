"""Write a llava-style vision projector GGUF (`clip.projector_type` "mlp") with random weights.

No package ships a projector, so the tests and bench/bench_vision.py build one with the real
architecture that llama.cpp's mtmd/clip code loads (a CLIP ViT plus llava's two-layer MLP),
as small as it accepts: 32x32 images in 8x8 patches (16 image tokens), width 64, 4 heads,
FFN 128, 2 blocks, all F32. The MLP's output width must equal the language model's embedding
width (576 for SmolLM2); its last layer is scaled so the image embeddings have about the
spread of the model's token embeddings, so random images steer the answer without drowning it.

The weights come from a fixed seed: the same file every time. It is written at test time into
a cache directory (never committed).

Usage: python tests/projector.py OUT.gguf [LM_WIDTH]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

IMAGE_SIZE = 32
PATCH = 8
WIDTH = 64
HEADS = 4
FFN = 128
BLOCKS = 2
SMOLLM2_WIDTH = 576
TARGET_STD = 0.14  # about the spread of SmolLM2's token embeddings
# Bump the version whenever write_projector() changes, so a stale cached file is never reused.
VERSION = 1


def cache_dir() -> Path:
    return Path(os.environ.get("NEXA_TEST_MODELS", Path.home() / ".cache" / "nexa" / "test-models"))


def write_projector(path: Path, lm_width: int = SMOLLM2_WIDTH, seed: int = 0) -> Path:
    import gguf

    rng = np.random.default_rng(seed)

    def rand(*shape: int, std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    n_patches = (IMAGE_SIZE // PATCH) ** 2
    tensors: dict[str, np.ndarray] = {
        # numpy shapes are ggml's dimensions reversed: a Linear(in, out) weight is (out, in).
        "v.patch_embd.weight": rand(WIDTH, 3, PATCH, PATCH, std=1 / np.sqrt(3 * PATCH * PATCH)),
        "v.class_embd": rand(WIDTH, std=0.02),
        "v.position_embd.weight": rand(n_patches + 1, WIDTH, std=0.02),
        "v.pre_ln.weight": np.ones(WIDTH, np.float32),
        "v.pre_ln.bias": np.zeros(WIDTH, np.float32),
    }
    for i in range(BLOCKS):
        p = f"v.blk.{i}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors[f"{p}.{name}.weight"] = rand(WIDTH, WIDTH, std=1 / np.sqrt(WIDTH))
            tensors[f"{p}.{name}.bias"] = np.zeros(WIDTH, np.float32)
        for name in ("ln1", "ln2"):
            tensors[f"{p}.{name}.weight"] = np.ones(WIDTH, np.float32)
            tensors[f"{p}.{name}.bias"] = np.zeros(WIDTH, np.float32)
        tensors[f"{p}.ffn_up.weight"] = rand(FFN, WIDTH, std=1 / np.sqrt(WIDTH))
        tensors[f"{p}.ffn_up.bias"] = np.zeros(FFN, np.float32)
        tensors[f"{p}.ffn_down.weight"] = rand(WIDTH, FFN, std=1 / np.sqrt(FFN))
        tensors[f"{p}.ffn_down.bias"] = np.zeros(WIDTH, np.float32)
    # llava's projector: Linear(vision width -> LM width), GELU, Linear(LM width -> LM width).
    # The ViT's GELU outputs have about unit spread, so std/sqrt(width) here gives outputs of about TARGET_STD.
    tensors["mm.0.weight"] = rand(lm_width, WIDTH, std=1 / np.sqrt(WIDTH))
    tensors["mm.0.bias"] = np.zeros(lm_width, np.float32)
    tensors["mm.2.weight"] = rand(lm_width, lm_width, std=TARGET_STD / np.sqrt(lm_width))
    tensors["mm.2.bias"] = np.zeros(lm_width, np.float32)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    w = gguf.GGUFWriter(str(tmp), "clip")
    w.add_string("general.name", "nexa-test-llava-projector")
    w.add_uint32("general.file_type", 0)  # all F32
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_text_encoder", False)
    w.add_bool("clip.has_llava_projector", True)
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.use_gelu", False)  # quick GELU, as CLIP ViT-L uses
    w.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    w.add_uint32("clip.vision.patch_size", PATCH)
    w.add_uint32("clip.vision.embedding_length", WIDTH)
    w.add_uint32("clip.vision.feed_forward_length", FFN)
    w.add_uint32("clip.vision.projection_dim", lm_width)
    w.add_uint32("clip.vision.block_count", BLOCKS)
    w.add_uint32("clip.vision.attention.head_count", HEADS)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    w.add_array("clip.vision.image_mean", [0.48145466, 0.4578275, 0.40821073])
    w.add_array("clip.vision.image_std", [0.26862954, 0.26130258, 0.27577711])
    for name, value in tensors.items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)  # a half-written file never has the final name
    return path


def ensure_projector(directory: Path | None = None, lm_width: int = SMOLLM2_WIDTH) -> Path:
    """The projector in the cache directory, written on first use (about 2 MB)."""
    path = (directory or cache_dir()) / f"llava-mlp-random-{lm_width}-v{VERSION}.mmproj.gguf"
    if not path.is_file():
        write_projector(path, lm_width)
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1])
    width = int(sys.argv[2]) if len(sys.argv) > 2 else SMOLLM2_WIDTH
    print(write_projector(out, width))
