"""One onnxruntime session the way every ONNX engine here wants it: the CPU provider, the
server's thread count for one operator at a time (requests are taken one by one, so parallel
operators would only fight the intra-op threads), and only onnxruntime's errors in the log."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def cpu_session(graph: Path, n_threads: int, *, deterministic: bool = False) -> Any:
    """`deterministic`: the same inputs give the same bits (the image engine's seeds promise it)."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = n_threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.use_deterministic_compute = deterministic
    return ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
