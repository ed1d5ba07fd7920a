"""Peer servers for the benchmarks, built or found outside the repo (nothing here is committed
from them): llama.cpp's `llama-server`, built from the llama.cpp source that the pinned
llama-cpp-python source archive vendors, and that archive's own `examples/server/server.py`.

    .venv/bin/python bench/peers.py        # fetch and build now (several minutes on 2 cores)
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

CACHE = Path(os.environ.get("NEXA_BENCH_CACHE", Path.home() / ".cache" / "nexa" / "bench"))


def llama_cpp_python_source() -> Path:
    """The unpacked sdist of the llama-cpp-python version installed here (pip downloads it once)."""
    ver = version("llama-cpp-python")
    root = CACHE / f"llama_cpp_python-{ver}"
    if (root / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = CACHE / f"llama_cpp_python-{ver}.tar.gz"
    if not archive.is_file():
        print(f"downloading the llama-cpp-python {ver} source archive ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={ver}", "--no-binary", ":all:",
             "--no-deps", "-q", "-d", str(CACHE)],
            check=True,
        )
    with tarfile.open(archive) as tar:
        tar.extractall(CACHE, filter="data")
    return root


# nexa never lets llama.cpp put weights in AMX buffers (their kernels crash; see
# src/nexa/engines/llama/cpu_buffers.py) but keeps CPU_REPACK. llama-server has no switch for exactly
# that (--no-repack drops both), so the peer is built with AMX compiled out: on a CPU with AMX it
# then follows the same rule, and elsewhere the flags change nothing. GCC honours an explicit
# -mno-* over what -march=native turns on, whatever their order.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def llama_server() -> Path:
    """Path of a llama-server binary built from the vendored llama.cpp (built if missing)."""
    src = llama_cpp_python_source() / "vendor" / "llama.cpp"
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    build = CACHE / f"llama-server-build-{version('llama-cpp-python')}{'-noamx' if x86 else ''}"
    binary = build / "bin" / "llama-server"
    if binary.is_file():
        return binary
    print(f"building llama-server from {src} (several minutes) ...", flush=True)
    subprocess.run(
        ["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
         "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
         "-DGGML_NATIVE=ON", *([f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"] if x86 else [])],
        check=True, stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 2)], check=True
    )
    return binary


def example_server() -> Path:
    """llama-cpp-python's batched example server (a single script)."""
    return llama_cpp_python_source() / "examples" / "server" / "server.py"


if __name__ == "__main__":
    print(llama_server())
    print(example_server())
