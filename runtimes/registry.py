"""The runtime registry: runners by name, so a new backend is one runner file and one line here.

Validation, the bundle, the accuracy-aware search and the bench ask for a runner by name and get
a :class:`~modelpress.runtimes.base.Runner`; none of them imports a backend. Entries are imported
on first use, so TensorRT and CUDA cost nothing on a CPU machine until a recipe names them.
"""

from __future__ import annotations

from typing import Any

from modelpress.registry import Registry
from modelpress.runtimes.base import Runner

RUNTIMES: Registry[Any] = Registry("runtime")
RUNTIMES.register("onnxruntime", "modelpress.runtimes.onnxruntime_runner:OnnxRuntimeRunner")
RUNTIMES.register("torch", "modelpress.runtimes.torch_runner:TorchRunner")
RUNTIMES.register("tensorrt", "modelpress.runtimes.tensorrt.runner:TensorRTRunner")
RUNTIMES.register("ort-cuda", "modelpress.runtimes.onnxruntime_gpu_runner:ort_cuda_runner")
RUNTIMES.register("ort-tensorrt", "modelpress.runtimes.onnxruntime_gpu_runner:ort_tensorrt_runner")
RUNTIMES.register("openvino", "modelpress.runtimes.openvino_runner:OpenVINORunner")
RUNTIMES.register("onnxruntime-genai", "modelpress.runtimes.genai_runner:GenAIRunner")
RUNTIMES.register("openvino-genai", "modelpress.runtimes.openvino_genai_runner:OpenVINOGenAIRunner")


def create_runner(runtime: str, source: Any, **options: Any) -> Runner:
    """A runner (not yet entered) of ``runtime`` for ``source``: a model file, or for ``torch`` an
    in-memory model."""
    return RUNTIMES.get(runtime)(source, **options)
