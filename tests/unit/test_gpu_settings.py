"""The GPU flags (-ngl N|auto|all, --main-gpu, --tensor-split, --whisper-device) and the mapping
of llama.cpp's log levels, without loading a model."""

from __future__ import annotations

import logging

import pytest

from nexa.config import Settings
from nexa.engines.llama import native_log
from nexa.engines.llama.gpu import ALL, Placement, gpu_layers, gpu_offload
from nexa.errors import StartupError
from support.settings import no_nexa_variables, parse  # noqa: F401  # the fixture is autouse


@pytest.mark.parametrize(
    "typed,value", [("auto", "auto"), ("all", "all"), ("ALL", "all"), ("-1", "all"), ("0", 0), ("24", 24)]
)
def test_ngl_takes_a_number_auto_or_all(typed: str, value: object) -> None:
    assert parse("-ngl", typed).n_gpu_layers == value
    assert parse("--n-gpu-layers", typed).n_gpu_layers == value


def test_the_default_is_auto_and_variables_work(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse().n_gpu_layers == "auto" and parse().main_gpu is None and parse().tensor_split is None
    monkeypatch.setenv("NEXA_N_GPU_LAYERS", "12")
    monkeypatch.setenv("NEXA_TENSOR_SPLIT", "3,1")
    monkeypatch.setenv("NEXA_WHISPER_DEVICE", "cpu")
    settings = parse()
    assert (settings.n_gpu_layers, settings.tensor_split, settings.whisper_device) == (12, (3.0, 1.0), "cpu")
    assert Settings.model_validate_json(settings.to_env()) == settings  # the worker's copy


@pytest.mark.parametrize(
    "argv,message",
    [
        (("-ngl", "many"), "--n-gpu-layers: Value error, write a number of layers, all, or auto"),
        (("-ngl", "-2"), "--n-gpu-layers: Value error, write a number of layers, all, or auto"),
        (("--tensor-split", "3,x"), "--tensor-split: Value error, write proportions separated by commas"),
        (("-ts", "0,0"), "--tensor-split: Value error, proportions must be 0 or more, and not all 0"),
        (("--main-gpu", "-1"), "--main-gpu must be at least 0"),
    ],
)
def test_bad_gpu_flags_name_the_flag(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(StartupError, match="^" + message.replace("(", r"\(")):
        parse(*argv)


def test_whisper_device_is_a_choice() -> None:
    assert parse("--whisper-device", "cuda").whisper_device == "cuda"
    with pytest.raises(SystemExit):
        parse("--whisper-device", "tpu")


def test_auto_is_every_layer_only_where_a_gpu_can_take_them() -> None:
    # This machine's llama.cpp is a CPU build (`nexa gpu` says so): auto is no layer.
    assert gpu_offload() is False
    assert (gpu_layers("auto"), gpu_layers("all"), gpu_layers(7), gpu_layers(0)) == (0, ALL, 7, 0)


def test_placement_sets_llama_cpps_split_fields() -> None:
    import llama_cpp

    whole = Placement(ALL, main_gpu=1).apply(llama_cpp.llama_model_default_params())
    assert (whole.n_gpu_layers, whole.split_mode, whole.main_gpu) == (-1, llama_cpp.LLAMA_SPLIT_MODE_NONE, 1)
    split = Placement(20, tensor_split=(3.0, 1.0))
    params = split.apply(llama_cpp.llama_model_default_params())
    assert params.split_mode == llama_cpp.LLAMA_SPLIT_MODE_LAYER and params.n_gpu_layers == 20
    assert [params.tensor_split[i] for i in range(3)] == [3.0, 1.0, 0.0]
    plain = Placement(0).apply(llama_cpp.llama_model_default_params())
    assert plain.split_mode == llama_cpp.LLAMA_SPLIT_MODE_LAYER and not plain.tensor_split  # llama.cpp's defaults


# -- llama.cpp's log levels ---------------------------------------------------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.got: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.got.append((record.levelname, record.getMessage()))


def line_logger(level: int) -> tuple[native_log.LineLogger, Records]:
    logger = logging.getLogger(f"test.llama.{level}")
    logger.propagate = False
    logger.setLevel(level)
    records = Records()
    logger.handlers = [records]
    return native_log.LineLogger(logger), records


def test_each_ggml_level_becomes_its_python_level() -> None:
    lines, records = line_logger(logging.DEBUG)
    for level, text in [(1, "a debug line\n"), (2, "an info line\n"), (3, "a warning\n"), (4, "an error\n"),
                        (0, "a level-less line\n")]:  # fmt: skip
        lines.write(level, text)
    assert records.got == [("DEBUG", "a debug line"), ("INFO", "an info line"), ("WARNING", "a warning"),
                           ("ERROR", "an error"), ("INFO", "a level-less line")]  # fmt: skip


def test_cont_continues_the_line_and_the_level_before_it() -> None:
    lines, records = line_logger(logging.DEBUG)
    lines.write(native_log.INFO, "loading")
    for _ in range(3):
        lines.write(native_log.CONT, ".")
    lines.write(native_log.CONT, " done\n")
    lines.write(native_log.ERROR, "failed: ")
    lines.write(native_log.CONT, "no such tensor\nsecond line\n")
    lines.write(native_log.WARN, "unterminated")
    lines.write(native_log.DEBUG, "next\n")  # a new level ends the line before it
    assert records.got == [("INFO", "loading... done"), ("ERROR", "failed: no such tensor"),
                           ("ERROR", "second line"), ("WARNING", "unterminated"), ("DEBUG", "next")]  # fmt: skip


def test_below_the_loggers_level_nothing_is_kept_but_errors_are() -> None:
    lines, records = line_logger(logging.WARNING)
    lines.write(native_log.DEBUG, "graph ")
    lines.write(native_log.CONT, "nodes\n")
    lines.write(native_log.INFO, "model params\n")
    lines.write(native_log.ERROR, "cannot allocate\n")
    lines.write(native_log.CONT, "")
    assert records.got == [("ERROR", "cannot allocate")]


def test_llama_cpps_info_lines_need_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger("llama.cpp")
    for root_level, expected in [(logging.INFO, logging.WARNING), (logging.DEBUG, logging.DEBUG)]:
        monkeypatch.setattr(logger, "level", logging.NOTSET)
        monkeypatch.setattr(logging.getLogger(), "level", root_level)
        native_log.quiet_info()
        assert logger.level == expected


def test_whisper_device_auto_follows_ctranslate2_and_cuda_insists() -> None:
    from nexa.engines.whisper import whisper_device

    # ctranslate2 sees no CUDA device here: auto runs on the CPU, cuda refuses to start.
    assert (whisper_device("auto"), whisper_device("cpu")) == ("cpu", "cpu")
    with pytest.raises(StartupError, match="--whisper-device cuda, but ctranslate2 finds no CUDA GPU"):
        whisper_device("cuda")
