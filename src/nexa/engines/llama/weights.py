"""Loading a GGUF's weights: the CPU buffer rule, the GPU placement, llama.cpp's logs, and the
one start-up line that says where everything went. Every llama.cpp engine loads through here."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nexa.engines.llama.cpu_buffers import WeightReport, log_weights, report_weights, set_weight_rule
from nexa.engines.llama.gpu import Placement, check_placement, devices, gpu_layers, gpu_offload
from nexa.engines.llama.native_log import route_llama_logs

log = logging.getLogger("nexa.engine.llama")


def load_model(
    path: Path,
    *,
    n_gpu_layers: int | str,
    main_gpu: int | None,
    tensor_split: tuple[float, ...] | None,
    repack: bool,
) -> tuple[Any, WeightReport, dict[str, Any]]:
    """(llama_cpp LlamaModel, llama.cpp's report of its buffers, the offload summary for /health)."""
    import llama_cpp
    from llama_cpp import _internals

    route_llama_logs()
    set_weight_rule(repack)  # never the AMX kernels (llama/cpu_buffers.py)
    if gpu_offload():
        check_placement(main_gpu, tensor_split)
    elif main_gpu is not None or tensor_split:
        log.warning("%s: --main-gpu and --tensor-split are ignored: this llama.cpp build has no GPU", path.name)
        main_gpu, tensor_split = None, None
    placement = Placement(gpu_layers(n_gpu_layers), main_gpu, tensor_split)
    params = placement.apply(llama_cpp.llama_model_default_params())
    with report_weights() as report:
        # verbose=True: otherwise the wrapper points fds 1 and 2 at /dev/null during the load,
        # hiding every thread's logs (llama.cpp's own go through native_log instead).
        model = _internals.LlamaModel(path_model=str(path), params=params, verbose=True)
    log_weights(path.name, report, repack)
    offload = offload_summary(report, model, n_gpu_layers)
    log.info(
        "%s: %d/%d layers on the GPU (-ngl %s), on %s",
        path.name,
        offload["gpu_layers"],
        offload["layers"],
        n_gpu_layers,
        ", ".join(offload["devices"]),
    )
    return model, report, offload


def offload_summary(report: WeightReport, model: Any, setting: int | str) -> dict[str, Any]:
    """{"n_gpu_layers": the setting, "gpu_layers": on the GPU, "layers": all of them (the output
    layer counts as one, as llama.cpp counts), "devices": where the weights are}."""
    import llama_cpp

    layers = llama_cpp.llama_model_n_layer(model.model) + 1
    on_gpu, layers = report.offloaded or (0, layers)
    named = {d.name for d in devices()}
    used = [name for name in report.buffers if name in named]  # "CUDA0", not "CUDA_Host" or "CPU_Mapped"
    return {"n_gpu_layers": setting, "gpu_layers": on_gpu, "layers": layers, "devices": used or ["CPU"]}
