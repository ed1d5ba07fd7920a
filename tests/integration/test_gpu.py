"""GPU placement and the native start-up, on whatever build is installed (a CPU build in CI).

- llama.cpp's libraries load before numpy in every process that loads a model: the server's
  own (`nexa server` without workers) and a worker's (`python -m nexa.workers.child`). The
  other order crashed every model load on a CUDA build (nexa/native.py). Checked in fresh
  processes, from the dynamic linker's own list of loaded objects, then a model loads and
  generates there.
- one llama.cpp context per text model, with llama-server's output limits (its compute buffer);
- llama.cpp's log lines at their own levels: errors visible at the default level, no debug;
- /health and `nexa gpu` say where the layers went and what the build can do.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from fastapi.testclient import TestClient

from nexa.models.types import ResolvedModel

SRC = str(Path(__file__).resolve().parents[2] / "src")

# The loaded objects in load order (glibc's link map, via dl_iterate_phdr).
LINK_ORDER = """
import ctypes

class _Info(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_void_p), ("name", ctypes.c_char_p)]

def link_order():
    names = []
    callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_Info), ctypes.c_size_t, ctypes.c_void_p)(
        lambda info, size, data: names.append((info.contents.name or b"").decode()) or 0)
    ctypes.CDLL(None).dl_iterate_phdr(callback, None)
    return names

def check_order():
    import sys
    assert "numpy" in sys.modules, "numpy was not imported: this path checks nothing"
    names = link_order()
    llama = next(i for i, n in enumerate(names) if n.endswith("/libllama.so"))
    numpy = next(i for i, n in enumerate(names) if "_multiarray_umath" in n)
    assert llama < numpy, names
    print("ORDER OK", names[llama].rsplit("/", 1)[-1], "before", names[numpy].rsplit("/", 1)[-1])
"""

GENERATE = """
import threading
from nexa.engines.base import SamplingParams, TextDelta

def one_token(engine):
    items = engine.generate(engine.tokenize("Hello"), SamplingParams(max_tokens=1, temperature=0), threading.Event())
    text = "".join(i.text for i in items if isinstance(i, TextDelta))
    print("TOKEN", repr(text))
    engine.close()
"""


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True, text=True, timeout=600, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_the_server_path_loads_llama_before_numpy_and_generates(smollm2: ResolvedModel) -> None:
    # What the `nexa` console script and `nexa server` import before they load a model.
    code = LINK_ORDER + GENERATE + """
import sys
from pathlib import Path
from nexa.cli import main  # the console script's import
from nexa.models.manager import ModelManager  # what serve() imports
from nexa.server.app import create_app
from nexa.config import Settings
from nexa.engines.loader import load_engine
from nexa.models.types import ModelType, ResolvedModel
check_order()
model = ResolvedModel("smollm2", Path(sys.argv[1]), ModelType.NLP)
one_token(load_engine(model, Settings(n_ctx=256, parallel=1, workers=False)))
"""
    done = run_python(code, str(smollm2.path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ORDER OK libllama.so before _multiarray_umath" in done.stdout
    assert re.search(r"TOKEN '.+'", done.stdout), done.stdout


def test_the_worker_path_loads_llama_before_numpy_and_generates(smollm2: ResolvedModel) -> None:
    # `python -m nexa.workers.child FD` imports the package, then the child module, then loads
    # the model with load_in_process: the same here, without the socket.
    code = LINK_ORDER + GENERATE + """
import sys
from pathlib import Path
import nexa.workers.child
from nexa.config import Settings
from nexa.models.startup import load_in_process
from nexa.models.types import ModelType, ResolvedModel
check_order()
model = ResolvedModel("smollm2", Path(sys.argv[1]), ModelType.NLP)
one_token(load_in_process(model, Settings(n_ctx=256, parallel=1)))
"""
    done = run_python(code, str(smollm2.path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ORDER OK" in done.stdout and re.search(r"TOKEN '.+'", done.stdout), done.stdout


def test_the_preload_runs_before_numpy_whatever_is_imported_first() -> None:
    done = run_python("import nexa.config, numpy, nexa.native as n; print(n.loaded, n.numpy_was_first)")
    assert done.returncode == 0, done.stderr
    assert "libllama.so" in done.stdout and done.stdout.strip().endswith("False"), done.stdout


LOAD_LOGGED = """
import logging, sys, threading
from pathlib import Path
logging.basicConfig(level=sys.argv[2], format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
from nexa.engines.llama.engine import LlamaEngine
from nexa.engines.base import SamplingParams
engine = LlamaEngine(Path(sys.argv[1]), name="s", n_ctx=512, parallel=4)
list(engine.generate(engine.tokenize("Hello " * 100), SamplingParams(max_tokens=4, temperature=0), threading.Event()))
engine.close()
try:
    LlamaEngine(Path(sys.argv[3]), name="broken")
except Exception as exc:
    print("REFUSED", type(exc).__name__)
"""


def test_llama_logs_at_their_levels_one_context_and_a_small_compute_buffer(
    smollm2: ResolvedModel, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    info = run_python(LOAD_LOGGED, str(smollm2.path), "INFO", str(broken))
    assert info.returncode == 0 and "REFUSED" in info.stdout, info.stderr[-3000:]
    lines = info.stderr.splitlines()
    assert not [line for line in lines if line.startswith("DEBUG")], lines[:20]
    assert not [line for line in lines if line.startswith("INFO llama.cpp")], lines[:20]  # its chatter: debug only
    errors = [line for line in lines if line.startswith("ERROR llama.cpp")]
    assert errors and any("broken.gguf" in line or "error loading model" in line for line in errors), lines
    assert any("0/31 layers on the GPU (-ngl auto), on CPU" in line for line in lines)  # a CPU build

    debug = run_python(LOAD_LOGGED, str(smollm2.path), "DEBUG", str(broken))
    assert debug.returncode == 0, debug.stderr[-3000:]
    native = [line for line in debug.stderr.splitlines() if " llama.cpp: " in line]
    assert any(line.startswith("DEBUG llama.cpp") for line in native)
    assert any(line.startswith("INFO llama.cpp: llama_context") for line in native)
    # One context for the text model (the weights-only one it once kept is gone) ...
    kv = [line for line in native if "KV buffer size" in line]
    assert len(kv) == 1, kv
    # ... with logits for one row per slot, as llama-server: its compute buffer on SmolLM2 was
    # 102.5 MiB with llama.cpp's default of a row per batch token (512 x 49152 floats).
    (compute,) = [float(m[1]) for line in native if (m := re.search(r"CPU compute buffer size =\s*([\d.]+) MiB", line))]
    assert compute < 32, compute


def test_health_says_where_each_model_runs(client: TestClient) -> None:
    (model,) = client.get("/health").json()["models"]
    # Through the worker process, as `nexa server` runs it; a CPU build keeps every layer on the CPU.
    assert model["offload"] == {"n_gpu_layers": "auto", "gpu_layers": 0, "layers": 31, "devices": ["CPU"]}


def test_nexa_gpu_reports_every_engine_library() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nexa", "gpu"], capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "llama.cpp (llama-cpp-python 0.3.36): GPU offload not built in" in out
    assert "-ngl auto (the default): no layers on the GPU (this llama.cpp build has no GPU offload)" in out
    assert "stable-diffusion.cpp (stable-diffusion-cpp-python 0.4.7): backend CPU only" in out
    assert "--whisper-device auto runs on cpu" in out
    assert "onnxruntime" in out and "CPUExecutionProvider" in out
