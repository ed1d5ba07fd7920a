"""Where llama.cpp keeps model weights on the CPU: one rule per process, and a report of it.

llama.cpp offers every weight to the CPU backend's "extra" buffer types before plain memory:
AMX (Intel Xeons since Sapphire Rapids, in builds compiled with AMX) and CPU_REPACK (weights
interleaved for the AVX2/AVX-512/NEON kernels of Q4_0, Q4_K, IQ4_NL, Q8_0). The AMX matrix
kernels crash the first `llama_decode` (llama.cpp #20824, Ollama #17205), so AMX is taken out
of that list before any model loads, whatever flags llama-cpp-python was built with. CPU_REPACK
stays (several times the prompt speed on Q4_0, bench/bench_repack.py) unless the operator turns
all repacking off with --no-repack, llama-server's switch for the next kernel bug of this kind.

The list is the CPU backend's own array (ggml-cpu.cpp, `ggml_backend_dev_get_extra_bufts`) that
every model load reads through the backend registry: llama-cpp-python exposes no per-model
switch (`use_extra_bufts`) and buffer-type overrides to the CPU consult the same list. We rewrite
the array in place from the entries it had first, so the rule can change within one process.
stable-diffusion.cpp and mtmd's image encoder allocate their weights in the backend's default
buffer, so they never reach these kernels.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

log = logging.getLogger("nexa.engine.llama")

AMX = "AMX"
_CPU_DEVICE = 0  # enum ggml_backend_dev_type: GGML_BACKEND_DEVICE_TYPE_CPU
_BUFFER_LINE = re.compile(r"(\S+) model buffer size =\s*([\d.]+) MiB")
_OFFLOAD_LINE = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")  # GPU builds only


class _ExtraBufferTypes:
    """The CPU backend's NULL-terminated array of extra buffer types, and what it held first."""

    def __init__(self) -> None:
        import llama_cpp
        from llama_cpp._ggml import libggml as g

        llama_cpp.llama_backend_init()  # registers the backends (loads them in GGML_BACKEND_DL builds)
        g.ggml_backend_dev_by_type.restype = ctypes.c_void_p
        g.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
        g.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
        g.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
        g.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
        g.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        g.ggml_backend_buft_name.restype = ctypes.c_char_p
        g.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
        self.lock = threading.Lock()
        self.array: ctypes.Array[ctypes.c_void_p] | None = None
        self.original: list[int] = []
        self.names: dict[int, str] = {}
        dev = g.ggml_backend_dev_by_type(_CPU_DEVICE)
        reg = g.ggml_backend_dev_backend_reg(dev) if dev else None
        address = g.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts") if reg else None
        if not address:  # a CPU backend without extra buffer types: nothing to choose
            return
        get = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(address)
        array = get(dev)
        if not array:
            return
        self.array = array
        while array[len(self.original)]:
            self.original.append(array[len(self.original)])
        self.names = {p: (g.ggml_backend_buft_name(p) or b"?").decode() for p in self.original}

    def keep(self, repack: bool) -> list[str]:
        """Leave AMX out always, every other extra type only with `repack`; returns the kept names."""
        with self.lock:
            kept = [p for p in self.original if repack and not self.names[p].startswith(AMX)]
            if self.array is not None:
                for i in range(len(self.original)):
                    self.array[i] = kept[i] if i < len(kept) else None
            return [self.names[p] for p in kept]

    def current(self) -> list[str]:
        out: list[str] = []
        while self.array is not None and (entry := self.array[len(out)]):
            out.append(self.names.get(entry, "?"))
        return out


@functools.cache
def _extra_buffer_types() -> _ExtraBufferTypes:
    # One per process: the array belongs to the native library, which is loaded once.
    return _ExtraBufferTypes()


def set_weight_rule(repack: bool = True) -> list[str]:
    """Apply the rule before a model loads; returns the extra buffer types weights may use."""
    return _extra_buffer_types().keep(repack)


def extra_buffer_types() -> list[str]:
    """The extra buffer types llama.cpp would offer weights now (for tests and diagnostics)."""
    return _extra_buffer_types().current()


def available_extra_buffer_types() -> list[str]:
    """Every extra buffer type this build and CPU offer, AMX included where present."""
    types = _extra_buffer_types()
    return [types.names[p] for p in types.original]


@functools.cache
def cpu_features() -> str:
    """The CPU features the llama.cpp build uses, from its own system info: "AVX2 AVX512 ... REPACK"."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    # "CPU : SSE3 = 1 | AVX2 = 1 | ... | REPACK = 1 | " (other backends follow their own "NAME : ")
    cpu = info.split("CPU :", 1)[-1]
    cpu = re.split(r"\|\s*\w+ : ", cpu, maxsplit=1)[0]
    return " ".join(name for name, value in re.findall(r"(\w+) = (\w+)", cpu) if value not in ("0", ""))


@dataclass
class WeightReport:
    """llama.cpp's own account of a model load: MiB per buffer type ("CPU_REPACK", "CPU_Mapped",
    "CUDA0"), and (layers on the GPU, layers) where the build can offload."""

    buffers: dict[str, float] = field(default_factory=dict)
    offloaded: tuple[int, int] | None = None

    def __str__(self) -> str:
        return ", ".join(f"{name} {mib:.0f} MiB" for name, mib in self.buffers.items()) or "no report"


@contextlib.contextmanager
def report_weights() -> Iterator[WeightReport]:
    """Collect the "model buffer size" lines that llama.cpp logs while a model loads here.

    llama.cpp's log is process-wide, so loads are expected one at a time (they are: at start-up
    or under the engine's own lock); lines still go on to the callback that was set before."""
    import llama_cpp

    report = WeightReport()
    previous, user_data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(previous), ctypes.byref(user_data))

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def capture(level: int, text: bytes, data: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", "replace")
        if match := _BUFFER_LINE.search(line):
            report.buffers[match[1]] = report.buffers.get(match[1], 0.0) + float(match[2])
        elif match := _OFFLOAD_LINE.search(line):
            report.offloaded = (int(match[1]), int(match[2]))
        if previous:
            previous(level, text, data)

    llama_cpp.llama_log_set(capture, user_data)
    try:
        yield report
    finally:
        llama_cpp.llama_log_set(previous if previous else None, user_data)


def log_weights(name: str, report: WeightReport, repack: bool) -> None:
    """The start-up line a crash report needs: CPU features in use and where the weights went."""
    rule = "AMX off" + ("" if repack else ", repacking off (--no-repack)")
    log.info("%s: llama.cpp CPU features: %s; weights: %s (%s)", name, cpu_features() or "none", report, rule)
