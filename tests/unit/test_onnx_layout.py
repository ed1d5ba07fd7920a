"""ONNX folders without a real model: the layouts no engine serves are refused with the reason,
the store's ONNX catalogue names, and which files of a repository are downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nexa.config import Settings
from nexa.engines.onnx.layout import choose_repo_files
from nexa.errors import StartupError
from nexa.models.manager import ModelManager
from nexa.models.store import ModelStore
from nexa.models.types import ModelType, ResolvedModel
from support.servers import free_port

ONNX = Settings(onnx=True, n_ctx=2048, n_threads=2)


def _load(path: Path, model_type: ModelType = ModelType.NLP) -> None:
    ModelManager.load(ResolvedModel(name=path.name, path=path, model_type=model_type), ONNX)


def test_a_folder_no_engine_fits_is_a_startup_error_naming_its_files(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(StartupError, match=r"fits no ONNX engine: found notes\.txt, weights\.bin"):
        _load(tmp_path)


def test_a_causal_lm_graph_is_not_taken_for_an_encoder(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, [1, None])
              for n in ("input_ids", "attention_mask", "past_key_values.0.key")]
    out = helper.make_tensor_value_info("logits", TensorProto.INT64, [1, None])
    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["logits"])], "g", inputs, [out])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "model.onnx"))
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(StartupError, match="causal language model"):
        _load(tmp_path)


def test_cli_start_with_a_folder_that_fits_nothing_is_one_line_and_status_2(tmp_path: Path) -> None:
    (tmp_path / "readme.md").write_text("no model here")
    env = {**os.environ, "NEXA_CACHE_ROOT": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "nexa", "server", "onnx", str(tmp_path), "-lp", "--port", str(free_port())],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 2, done.stderr
    assert "fits no ONNX engine: found readme.md" in done.stderr and "Traceback" not in done.stderr


def test_onnx_catalogue_names_are_their_own() -> None:
    onnx, gguf = ModelStore(onnx=True).catalogue, ModelStore().catalogue
    phi3 = onnx.get("phi3")
    assert phi3 is not None and phi3.sources[0].repo == "microsoft/Phi-3-mini-4k-instruct-onnx"  # type: ignore[union-attr]
    assert gguf.get("phi3").sources[0].repo != phi3.sources[0].repo  # type: ignore[union-attr]
    assert onnx.get("all-MiniLM-L6-v2").model_type == ModelType.TEXT_EMBEDDING  # type: ignore[union-attr]
    # Kokoro is an ONNX model in both variants: the same wheels, pinned alike in both catalogues.
    assert onnx.get("kokoro").sources == gguf.get("kokoro").sources  # type: ignore[union-attr]


def test_choose_repo_files_picks_one_build() -> None:
    cpu = "cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4"
    listing = [
        "README.md", "config.json",
        f"{cpu}/genai_config.json", f"{cpu}/model.onnx", f"{cpu}/model.onnx.data", f"{cpu}/tokenizer.json",
        "cuda/cuda-fp16/genai_config.json", "cuda/cuda-fp16/model.onnx", "cuda/cuda-fp16/model.onnx.data",
    ]
    assert choose_repo_files(listing) == (cpu, [f for f in listing if f.startswith(cpu)])
    assert choose_repo_files(listing, "cuda/cuda-fp16")[0] == "cuda/cuda-fp16"
    with pytest.raises(ValueError, match="no onnxruntime-genai folder"):
        choose_repo_files(listing, "directml")
    st = ["config.json", "tokenizer.json", "modules.json", "1_Pooling/config.json", "pytorch_model.bin",
          "model.safetensors", "onnx/model.onnx", "onnx/model_O4.onnx", "onnx/model_qint8_avx512.onnx",
          "openvino/openvino_model.xml"]
    assert choose_repo_files(st) == ("", ["1_Pooling/config.json", "config.json", "modules.json",
                                          "onnx/model.onnx", "tokenizer.json"])
    assert "onnx/model_O4.onnx" in choose_repo_files(st, "onnx/model_O4.onnx")[1]
    with pytest.raises(ValueError, match="no genai_config.json"):
        choose_repo_files(["model.safetensors", "tokenizer.json"])
    # An optimum Whisper export as the hub's onnx-community repositories lay it out: the float graphs
    # the engine runs (decoder + decoder_with_past over the merged one), never the quantized copies.
    whisper = ["config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json", "README.md",
               "onnx/encoder_model.onnx", "onnx/decoder_model.onnx", "onnx/decoder_with_past_model.onnx",
               "onnx/decoder_model_merged.onnx", "onnx/decoder_model_merged_quantized.onnx",
               "onnx/encoder_model_quantized.onnx", "onnx/decoder_model.onnx_data"]
    assert choose_repo_files(whisper) == ("", [
        "config.json", "generation_config.json", "onnx/decoder_model.onnx", "onnx/decoder_model.onnx_data",
        "onnx/decoder_with_past_model.onnx", "onnx/encoder_model.onnx", "preprocessor_config.json",
        "tokenizer.json"])
    merged_only = [f for f in whisper if "decoder_model.onnx" not in f and "with_past" not in f]
    assert "onnx/decoder_model_merged.onnx" in choose_repo_files(merged_only)[1]


def test_choose_repo_files_takes_a_stable_diffusion_pipeline_and_not_its_other_weights() -> None:
    onnx = ["model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
            "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "text_encoder/model.onnx",
            "text_encoder/config.json", "unet/model.onnx", "unet/model.onnx_data", "unet/config.json",
            "vae_decoder/model.onnx", "vae_decoder/config.json", "vae_encoder/model.onnx", "vae_encoder/config.json"]
    others = ["README.md", "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "safety_checker/model.onnx",
              "feature_extractor/preprocessor_config.json", "v1-5-pruned.ckpt"]
    assert choose_repo_files(onnx + others) == ("", sorted(onnx))
    # A pipeline in a folder of the repository, named as REPO:FOLDER.
    nested = ["README.md", *(f"onnx/{f}" for f in onnx)]
    assert choose_repo_files(nested, "onnx") == ("onnx", sorted(nested[1:]))


def test_a_diffusers_folder_without_onnx_graphs_says_how_to_export_it(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    with pytest.raises(StartupError, match="optimum-cli export onnx"):
        _load(tmp_path)
