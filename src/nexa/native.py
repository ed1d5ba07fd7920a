"""Load llama.cpp's shared libraries before anything else, numpy above all (nexa/__init__.py).

On a CUDA build of llama-cpp-python 0.3.36, importing numpy before llama.cpp's libraries makes
the first `llama_model_load` crash while the tokenizer compiles its regular expressions
(std::regex in llama_vocab::impl::load; the top frame lands in libggml-cuda.so). Loading
libllama first, or LD_PRELOAD of it, avoids the crash: the C++ runtime objects the libraries
bind to come from them, not from what numpy's extensions brought in first. Seen 7 starts out of
7 on an NVIDIA H200; llama-cpp-python issue #1581 reports the same. So the package loads the
libraries (not the llama_cpp module, which itself imports numpy) the moment `nexa` is imported:
every way in (`nexa`, `python -m nexa...`, the worker child, tests) imports this package first.
It costs a dlopen (a few ms on CPU; a CUDA build also maps the CUDA runtime, which loading a model
needs anyway). Where llama-cpp-python is not installed there is nothing to load.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

# In load order: libllama pulls in libggml and its backends (CUDA, Metal...), libmtmd the rest.
_LIBRARIES = ("llama", "mtmd")

loaded: list[str] = []  # paths of the libraries this module loaded
numpy_was_first = False  # numpy already imported when this ran (the order the crash needs)


def _library_dir() -> str | None:
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "lib")


def preload_llama() -> None:
    """dlopen libllama (and libmtmd) as llama_cpp itself will (RTLD_LOCAL: its later dlopen
    returns the same handle, and stable-diffusion.cpp's own copy of ggml is not interposed)."""
    global numpy_was_first
    if loaded or sys.platform not in ("linux", "darwin"):  # Windows: llama_cpp sets its DLL paths itself
        return
    numpy_was_first = "numpy" in sys.modules
    folder = _library_dir()
    if folder is None:
        return
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    for name in _LIBRARIES:
        path = os.path.join(folder, f"lib{name}{suffix}")
        if not os.path.exists(path) and sys.platform == "darwin":
            path = os.path.join(folder, f"lib{name}.so")
        if not os.path.exists(path):
            continue
        try:
            ctypes.CDLL(path)
        except OSError:  # a broken install: llama_cpp's own import will say what is wrong
            return
        loaded.append(path)
