"""What ONNX model folders look like: which engine a folder fits, and which files of a hub
repository make one model.

Pure Python (no onnxruntime), so the model store can use it to pick files before any engine
library is imported. Layouts recognised:
- onnxruntime-genai text models: genai_config.json beside the decoder .onnx and tokenizer files;
- sentence-embedding encoders: an .onnx encoder (model.onnx or onnx/model.onnx) with a
  Hugging Face tokenizer.json, as sentence-transformers and optimum export them;
- Stable Diffusion pipelines as diffusers and optimum export them: model_index.json beside
  text_encoder/, unet/, vae_decoder/, vae_encoder/ (each a model.onnx), tokenizer/ and scheduler/;
- Whisper as optimum exports it: encoder_model.onnx + decoder_model*.onnx (at the top or in
  onnx/) beside a config.json whose model_type is "whisper", and tokenizer.json;
- layouts we recognise only to refuse clearly: other optimum sequence-to-sequence exports,
  incomplete diffusion pipelines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

GENAI = "genai"
ENCODER = "encoder"
DIFFUSION = "diffusion"

# A diffusers/optimum ONNX Stable Diffusion pipeline: these files, each under the folder.
DIFFUSION_FILES = (
    "model_index.json", "text_encoder/model.onnx", "unet/model.onnx", "vae_decoder/model.onnx",
    "vae_encoder/model.onnx", "tokenizer/vocab.json", "tokenizer/merges.txt", "scheduler/scheduler_config.json",
)
WHISPER = "whisper"

# Plain (float) exports first: optimum and sentence-transformers name their quantized or
# graph-optimised variants model_O1..O4 / model_qint8_* / model_quantized, which are picked
# only when asked for by name.
ENCODER_NAMES = ("onnx/model.onnx", "model.onnx")
# Small files a sentence-embedding repository needs beside the .onnx graph.
_ENCODER_SIDE_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)


@dataclass(frozen=True)
class Layout:
    kind: str  # GENAI, ENCODER, DIFFUSION or WHISPER
    root: Path  # the folder the engine loads
    model_file: Path | None = None  # ENCODER: the .onnx graph; WHISPER: encoder_model.onnx


def describe_folder(folder: Path, limit: int = 12) -> str:
    """A short listing for error messages: what was actually found."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts)
    shown = ", ".join(files[:limit]) + (f", ... ({len(files)} files)" if len(files) > limit else "")
    return shown or "no files"


def unsupported_reason(folder: Path) -> str | None:
    """Why a recognisable but unserved ONNX layout cannot be served, or None."""
    if (folder / "model_index.json").is_file() or (folder / "unet" / "model.onnx").is_file():
        missing = [f for f in DIFFUSION_FILES if not (folder / f).is_file()]
        if missing:
            return (
                f"a diffusion pipeline without {', '.join(missing)}; the ONNX variant serves Stable Diffusion "
                "exported with `optimum-cli export onnx --model REPO OUT` (text_encoder, unet, vae_decoder, "
                "vae_encoder, tokenizer and scheduler)"
            )
        return None
    names = {p.name for p in folder.rglob("*.onnx")}
    if "encoder_model.onnx" in names and any(n.startswith("decoder_model") for n in names):
        if whisper_graphs(folder) is not None:
            return None
        if model_type(folder) == "whisper":
            return (
                "an optimum Whisper export without the graphs the engine runs: it needs encoder_model.onnx and "
                "decoder_model.onnx or decoder_model_merged.onnx side by side (at the top or in onnx/), and "
                "tokenizer.json; re-export it with `optimum-cli export onnx --model openai/whisper-tiny.en OUT`"
            )
        return (
            f"an optimum sequence-to-sequence export (encoder_model.onnx + decoder_model*.onnx) of a "
            f"{model_type(folder) or 'model without config.json'}; the ONNX variant serves Whisper exports of this "
            f"layout (config.json with model_type \"whisper\"), no other sequence-to-sequence model"
        )
    if any(n.startswith("decoder_model") for n in names):
        return (
            "an optimum causal-LM export (decoder_model*.onnx); the ONNX variant runs text generation with "
            "onnxruntime-genai folders (genai_config.json): convert the model with "
            "`python -m onnxruntime_genai.models.builder -i HF_FOLDER -o OUT -p int4 -e cpu`"
        )
    cfg = folder / "genai_config.json"
    if cfg.is_file():
        try:
            kind = json.loads(cfg.read_text(encoding="utf-8")).get("model", {}).get("type", "")
        except (OSError, ValueError):
            return "an onnxruntime-genai folder whose genai_config.json cannot be read as JSON"
        if "whisper" in str(kind).lower():
            return (
                "an onnxruntime-genai Whisper model; the ONNX variant serves Whisper as optimum exports it "
                "(encoder_model.onnx + decoder_model*.onnx): "
                "`optimum-cli export onnx --model openai/whisper-tiny.en OUT`"
            )
    return None


def model_type(folder: Path) -> str | None:
    """config.json's model_type (as transformers and optimum write it), if readable."""
    try:
        kind = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return str(kind) if kind else None


def whisper_graphs(folder: Path) -> Path | None:
    """The folder holding an optimum Whisper export's graphs (the top, or onnx/ as the hub's
    onnx-community repositories have it), when the folder is one; else None."""
    if model_type(folder) != "whisper" or not (folder / "tokenizer.json").is_file():
        return None
    for graphs in (folder, folder / "onnx"):
        decoders = ("decoder_model.onnx", "decoder_model_merged.onnx")
        if (graphs / "encoder_model.onnx").is_file() and any((graphs / d).is_file() for d in decoders):
            return graphs
    return None


def detect(folder: Path) -> Layout | None:
    """The engine layout a local folder fits, or None (see unsupported_reason/describe_folder)."""
    if not folder.is_dir():
        return None
    if unsupported_reason(folder) is not None:
        return None
    if (folder / "model_index.json").is_file():
        return Layout(DIFFUSION, folder)
    speech = whisper_graphs(folder)
    if speech is not None:
        return Layout(WHISPER, folder, speech / "encoder_model.onnx")
    if (folder / "genai_config.json").is_file():
        return Layout(GENAI, folder)
    if (folder / "tokenizer.json").is_file():
        for name in ENCODER_NAMES:
            if (folder / name).is_file():
                return Layout(ENCODER, folder, folder / name)
        graphs = sorted(folder.glob("*.onnx")) + sorted(folder.glob("onnx/*.onnx"))
        if len(graphs) == 1:
            return Layout(ENCODER, folder, graphs[0])
    return None


# -- choosing files in a hub repository ------------------------------------------------------

_WHISPER_SIDE_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
                       "tokenizer_config.json", "special_tokens_map.json")
# The decoders the engine runs, best first; quantized variants (decoder_model_int8.onnx...) are not taken.
_WHISPER_DECODERS = (("decoder_model.onnx", "decoder_with_past_model.onnx"), ("decoder_model_merged.onnx",),
                     ("decoder_model.onnx",))


def choose_repo_files(files: list[str], selector: str | None = None) -> tuple[str, list[str]]:
    """Which files of a repository listing make one ONNX model: (folder inside the repo, files).

    `selector` is a folder (for repositories holding several genai builds, e.g.
    cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4, or a Stable Diffusion pipeline) or an .onnx
    file (an encoder variant). Without one: a Stable Diffusion pipeline at the top, else the genai
    folder built for CPU, else an optimum Whisper export's graphs (_whisper_repo_files), else the
    plain encoder export. Raises
    ValueError saying what the repository holds when nothing fits.
    """
    sel = selector.strip("/") if selector else None
    pipeline = _diffusion_files(files, sel or "")
    if pipeline:
        return sel or "", pipeline
    genai = sorted(str(PurePosixPath(f).parent) for f in files if PurePosixPath(f).name == "genai_config.json")
    if sel and not sel.endswith(".onnx"):
        genai = [g for g in genai if g == sel or (g == "." and sel in ("", "."))]
        if not genai:
            raise ValueError(f"no onnxruntime-genai folder (genai_config.json) at {sel!r}")
    if genai:
        # CPU builds first: this server runs the CPU package of onnxruntime-genai.
        folder = min(genai, key=lambda g: ("cpu" not in g.lower(), len(g), g))
        folder = "" if folder == "." else folder
        prefix = folder + "/" if folder else ""
        return folder, [f for f in files if f.startswith(prefix) and "/" not in f[len(prefix) :]]
    speech = None if sel else _whisper_repo_files(files)
    if speech is not None:
        return "", speech
    graphs = [f for f in files if f.endswith(".onnx")]
    if sel:
        if sel not in graphs:
            raise ValueError(f"no file {sel!r} (ONNX files: {', '.join(sorted(graphs)) or 'none'})")
        graph = sel
    else:
        graph = next((n for n in ENCODER_NAMES if n in graphs), None)  # type: ignore[assignment]
        if graph is None:
            shown = ", ".join(sorted(graphs)[:8]) or "none"
            raise ValueError(
                f"no genai_config.json and no onnx/model.onnx or model.onnx (ONNX files: {shown}); "
                "name a folder or file as REPO:PATH"
            )
    if "tokenizer.json" not in files:
        raise ValueError(f"{graph} has no tokenizer.json beside it at the top of the repository")
    keep = set(_ENCODER_SIDE_FILES) | {graph}
    # External weights of the chosen graph (model.onnx_data / model.onnx.data) come with it.
    keep |= {f for f in files if f.startswith(graph + "_data") or f.startswith(graph + ".data")}
    keep |= {f for f in files if PurePosixPath(f).parent.name.endswith("_Pooling") and f.endswith("config.json")}
    return "", sorted(f for f in files if f in keep)


def _diffusion_files(files: list[str], folder: str) -> list[str]:
    """A Stable Diffusion pipeline's files under `folder` (model_index.json there), else []: each
    part's model.onnx with its external weights and config, the tokenizer and the scheduler; not
    the repository's PyTorch weights or other exports."""
    prefix = folder + "/" if folder else ""
    if prefix + "model_index.json" not in files:
        return []
    graph_files = ("model.onnx", "config.json", "weights.pb")  # weights.pb: diffusers' old converter
    keep = []
    for f in files:
        if not f.startswith(prefix):
            continue
        rel = f[len(prefix):]
        part, _, name = rel.partition("/")
        if rel == "model_index.json" or (part in ("tokenizer", "scheduler") and "/" not in name):
            keep.append(f)
        elif part in ("text_encoder", "unet", "vae_decoder", "vae_encoder") and (
            name in graph_files or name.startswith(("model.onnx_data", "model.onnx.data"))
        ):
            keep.append(f)
    return sorted(keep)


def _whisper_repo_files(files: list[str]) -> list[str] | None:
    """An optimum Whisper export's float graphs (at the top or in onnx/), their external weights and
    side files; None when the listing holds no encoder_model.onnx with a decoder the engine runs."""
    names = set(files)
    for folder in ("", "onnx/"):
        if folder + "encoder_model.onnx" not in names:
            continue
        for decoders in _WHISPER_DECODERS:
            if all(folder + d in names for d in decoders):
                graphs = [folder + g for g in ("encoder_model.onnx", *decoders)]
                data = {f for f in files for g in graphs if f.startswith((g + "_data", g + ".data"))}
                return sorted({*graphs, *data, *(n for n in _WHISPER_SIDE_FILES if n in names)})
    return None
