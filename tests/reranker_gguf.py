"""A reranker GGUF of a real architecture, for the rank-pooling engine (engines/llama/reranker.py):
no reranker GGUF ships on PyPI (see MODELS.md), so this writes all-MiniLM-L6-v2's BERT as
llama.cpp's converter writes a BERT cross-encoder (BertForSequenceClassification): pooling type
rank, `bert.pooler.dense` as the head's `cls` layer (MiniLM's own weights) and the classifier as
`cls.output`, one output, random (seeded). The scores mean nothing: it proves the plumbing
(shapes, determinism, that each pair's text changes its score), not the ranking.

Usage: python tests/reranker_gguf.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minilm_gguf import cache_dir, convert, minilm_folder, read_safetensors

# Bump the suffix whenever this changes, so a stale cached GGUF is never reused.
GGUF_NAME = "all-MiniLM-L6-v2-rank-random-v1.gguf"


def reranker_head(folder: Path) -> dict[str, np.ndarray]:
    """The classification head's tensors, by their GGUF names (the same on every call)."""
    weights = read_safetensors(folder / "model.safetensors")
    width = weights["pooler.dense.weight"].shape[0]
    rng = np.random.default_rng(18)
    return {
        "cls.weight": weights["pooler.dense.weight"],
        "cls.bias": weights["pooler.dense.bias"],
        # The tanh before it keeps inputs within [-1, 1]: scores spread over about a unit.
        "cls.output.weight": rng.normal(0.0, 1.0 / np.sqrt(width), (1, width)).astype(np.float32),
        "cls.output.bias": np.full(1, 0.25, np.float32),
    }


def reranker_gguf() -> Path:
    import gguf

    out = cache_dir() / GGUF_NAME
    if not out.is_file():
        folder = minilm_folder()
        convert(folder, out, pooling=gguf.PoolingType.RANK, extra=reranker_head(folder))
    return out


if __name__ == "__main__":
    print(reranker_gguf())
