"""`nexa gpu`: what this install can run on a GPU, and what the GPU flags would do here.

Each engine's library is built for its devices when it is installed (README, "GPUs"): this
asks each one what it has, loading no model. A library that is missing or fails to load is
reported, not raised: the command exists to find out what is wrong. Each is asked in a process
of its own, so that one that crashes (a segfault in a GPU runtime, as `nexa gpu` once met on an
H200 with the libraries of that machine) is reported with how it ended, and the others still
answer.
"""

from __future__ import annotations

import importlib.metadata
import mmap
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# Symbols stable-diffusion.cpp's library holds when ggml was built into it with a GPU backend
# (its Python bindings do not say; the HIP backend reuses the CUDA names).
_SD_BACKENDS = {b"ggml_backend_cuda_init": "CUDA or ROCm", b"ggml_backend_vk_init": "Vulkan",
                b"ggml_backend_metal_init": "Metal", b"ggml_backend_sycl_init": "SYCL"}  # fmt: skip


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def llama_lines() -> list[str]:
    import llama_cpp

    from nexa.engines.llama.gpu import describe_layers, devices

    built = bool(llama_cpp.llama_supports_gpu_offload())
    lines = [f"llama.cpp (llama-cpp-python {_version('llama_cpp_python')}): GPU offload "
             f"{'built in' if built else 'not built in (a CPU build: see README, GPUs)'}"]  # fmt: skip
    for i, d in enumerate(devices()):
        lines.append(f"  device {i}: {d.name} ({d.kind}) {d.description}, {d.free_mib / 1024:.1f} of "
                     f"{d.total_mib / 1024:.1f} GiB free")  # fmt: skip
    if built and not devices():
        lines.append("  no GPU device found (driver missing, or CUDA_VISIBLE_DEVICES empty?)")
    lines.append(f"  -ngl auto (the default): {describe_layers('auto')}")
    return lines


def diffusion_lines() -> list[str]:
    import stable_diffusion_cpp

    library = Path(stable_diffusion_cpp.__file__).parent / "lib"
    found = []
    for path in sorted(library.glob("*stable-diffusion*")):
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            found += [name for symbol, name in _SD_BACKENDS.items() if data.find(symbol) >= 0]
    backend = ", ".join(sorted(set(found))) or "CPU only (rebuild with CMAKE_ARGS=\"-DSD_CUDA=ON\": see README)"
    return [f"stable-diffusion.cpp (stable-diffusion-cpp-python {_version('stable_diffusion_cpp_python')}): "
            f"backend {backend}"]  # fmt: skip


def whisper_lines() -> list[str]:
    import ctranslate2

    from nexa.engines.whisper import whisper_device

    gpus = ctranslate2.get_cuda_device_count()
    device = whisper_device("auto")
    types = ", ".join(sorted(ctranslate2.get_supported_compute_types(device)))
    return [
        f"faster-whisper (ctranslate2 {_version('ctranslate2')}): {gpus} CUDA device(s); --whisper-device auto "
        f"runs on {device} (compute types there: {types})"
    ]


def onnx_lines() -> list[str]:
    import onnxruntime

    providers = ", ".join(onnxruntime.get_available_providers())
    return [f"onnxruntime ({_version('onnxruntime')}): execution providers {providers}"]


CHECKS: dict[str, Callable[[], list[str]]] = {
    "llama.cpp": llama_lines, "stable-diffusion.cpp": diffusion_lines,
    "faster-whisper": whisper_lines, "onnxruntime": onnx_lines,
}  # fmt: skip


def lines_of(name: str) -> list[str]:
    """One library's lines, asked here."""
    try:
        return CHECKS[name]()
    except Exception as exc:  # noqa: BLE001 - a broken library is what this command reports
        return [f"{name}: cannot be loaded ({type(exc).__name__}: {exc})"]


def ask(name: str, command: list[str] | None = None, timeout_s: float = 120) -> list[str]:
    """One library's lines, asked in a process of its own (`command`, for tests)."""
    from nexa.workers.remote import exit_reason

    try:
        done = subprocess.run(command or [sys.executable, "-m", "nexa.gpu_check", name], capture_output=True,
                              text=True, timeout=timeout_s)  # fmt: skip
    except subprocess.TimeoutExpired:
        return [f"{name}: no answer in {timeout_s:.0f}s (a GPU runtime hanging at start-up?)"]
    if done.returncode == 0:
        return done.stdout.splitlines()
    said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    fatal = next((i for i, line in enumerate(said) if line.startswith("Fatal Python error")), None)
    said = said[fatal : fatal + 10] if fatal is not None else said[-5:]  # where it crashed, from faulthandler
    return [f"{name}: crashed while loading ({exit_reason(done.returncode)}); its last lines:",
            *(f"  | {line}" for line in said)]  # fmt: skip


def main() -> int:
    for name in CHECKS:
        for line in ask(name):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    import faulthandler

    faulthandler.enable()  # a native crash prints where it happened, which the parent shows
    for line in lines_of(sys.argv[1]):
        print(line)
