"""Where a GGUF's layers go: -ngl N|auto|all, --main-gpu, --tensor-split, and what the build offers.

llama.cpp puts the first (n_layer + 1 - N) layers on the CPU and the last N (the output layer
counts as one) on the GPU devices of its build; a CPU-only build ignores all of it. "auto" is
every layer where the build has a GPU backend and a device, else none (what it chose is logged).
--main-gpu puts the whole model on one device (llama.cpp's split mode NONE); --tensor-split
spreads the layers over several devices in those proportions (split mode LAYER).
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass, field
from typing import Any

ALL = -1  # llama.cpp's "every layer"
_GPU_TYPES = {1: "GPU", 2: "iGPU", 3: "accelerator"}  # enum ggml_backend_dev_type (0 is the CPU)


@dataclass(frozen=True)
class Device:
    name: str  # llama.cpp's backend device name: CUDA0, Metal, Vulkan0
    description: str
    kind: str
    free_mib: float
    total_mib: float


@functools.cache
def devices() -> tuple[Device, ...]:
    """The non-CPU devices llama.cpp's build registered (none on a CPU-only build)."""
    import llama_cpp
    from llama_cpp._ggml import libggml as g

    llama_cpp.llama_backend_init()  # registers the backends (loads them in GGML_BACKEND_DL builds)
    g.ggml_backend_dev_count.restype = ctypes.c_size_t
    g.ggml_backend_dev_get.restype = ctypes.c_void_p
    g.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for fn in (g.ggml_backend_dev_name, g.ggml_backend_dev_description):
        fn.restype, fn.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    g.ggml_backend_dev_type.restype, g.ggml_backend_dev_type.argtypes = ctypes.c_int, [ctypes.c_void_p]
    size_p = ctypes.POINTER(ctypes.c_size_t)
    g.ggml_backend_dev_memory.restype, g.ggml_backend_dev_memory.argtypes = None, [ctypes.c_void_p, size_p, size_p]
    found = []
    for i in range(g.ggml_backend_dev_count()):
        dev = g.ggml_backend_dev_get(i)
        kind = g.ggml_backend_dev_type(dev)
        if kind not in _GPU_TYPES:
            continue
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        g.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        found.append(
            Device(
                (g.ggml_backend_dev_name(dev) or b"?").decode(),
                (g.ggml_backend_dev_description(dev) or b"").decode(),
                _GPU_TYPES[kind],
                free.value / 2**20,
                total.value / 2**20,
            )
        )
    return tuple(found)


def gpu_offload() -> bool:
    """Whether this llama.cpp build can put layers on a GPU, and has a device to put them on."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload()) and bool(devices())


def gpu_layers(setting: int | str) -> int:
    """-ngl's value as llama.cpp's n_gpu_layers: "all" -> every layer, "auto" -> every layer
    where a GPU can take them, else 0; a number as given."""
    if setting == "all":
        return ALL
    if setting == "auto":
        return ALL if gpu_offload() else 0
    return int(setting)


def describe_layers(setting: int | str) -> str:
    """What -ngl SETTING does on this machine, in words (for `nexa gpu`)."""
    import llama_cpp

    n = gpu_layers(setting)
    if not llama_cpp.llama_supports_gpu_offload():
        return "no layers on the GPU (this llama.cpp build has no GPU offload)"
    if not devices():
        return "no layers on the GPU (no GPU device found)"
    return "every layer on the GPU" if n == ALL else f"{n} layers on the GPU (of the model's layers + 1)"


@dataclass
class Placement:
    """llama_model_params' GPU fields for one load; keep it alive until the load returns (the
    tensor split is a C array the params point at)."""

    n_gpu_layers: int
    main_gpu: int | None = None
    tensor_split: tuple[float, ...] | None = None
    _array: Any = field(default=None, repr=False)

    def apply(self, params: Any) -> Any:
        import llama_cpp

        params.n_gpu_layers = self.n_gpu_layers
        if self.tensor_split:
            self._array = (ctypes.c_float * llama_cpp.llama_max_devices())(*self.tensor_split)
            params.split_mode = llama_cpp.LLAMA_SPLIT_MODE_LAYER
            params.tensor_split = self._array
        elif self.main_gpu is not None:
            params.split_mode = llama_cpp.LLAMA_SPLIT_MODE_NONE
            params.main_gpu = self.main_gpu
        return params


def check_placement(main_gpu: int | None, tensor_split: tuple[float, ...] | None) -> None:
    """A --main-gpu or --tensor-split the machine cannot follow: a ValueError saying why."""
    import llama_cpp

    if tensor_split and len(tensor_split) > llama_cpp.llama_max_devices():
        raise ValueError(
            f"--tensor-split has {len(tensor_split)} parts, but this llama.cpp build takes at most "
            f"{llama_cpp.llama_max_devices()} devices"
        )
    count = len(devices())
    if main_gpu is not None and count and main_gpu >= count:
        raise ValueError(f"--main-gpu {main_gpu}: this machine has {count} GPU device(s), numbered from 0")
