"""The TensorRT engines a recipe asks for, built in one run folder (``modelpress engine RUN_DIR`` is
``modelpress.run_commands.engine_stage``).

Place in the pipeline: after ``quantize`` (and ``export``). Order of work, so that a machine
without TensorRT or a GPU fails before writing anything and leaves the ONNX artifacts as they were:
 1. check the Q/DQ model against TensorRT's rules (``checker``; needs no GPU),
 2. require TensorRT and a GPU,
 3. int8: ``model.int8.onnx`` -> ``model.plan`` + ``engine.json``,
 4. fp16: ``model.onnx`` -> ``model.fp16.onnx`` -> ``model.fp16.plan`` + ``engine.fp16.json``.
All builds share one timing cache (``timing.cache`` in the run folder by default).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from modelpress.errors import BadInputError
from modelpress.paths import RunPaths
from modelpress.runtimes.artifacts import RuntimeArtifact
from modelpress.runtimes.tensorrt.checker import require_trt_compatible
from modelpress.runtimes.tensorrt.config import EngineConfig
from modelpress.runtimes.tensorrt.engine import build_engine
from modelpress.runtimes.tensorrt.fp16 import convert_to_fp16
from modelpress.runtimes.tensorrt.gpu import gpu_identity, require_tensorrt

log = logging.getLogger(__name__)


def build_engines(run_dir: Path, cfg: EngineConfig, *, modality: str = "text") -> tuple[dict[str, Any], ...]:
    """Build every engine ``cfg.precisions`` asks for in ``run_dir``; return their metadata.

    Builds whether or not ``cfg.enabled`` is set (that key only decides whether ``modelpress run``
    calls this stage). Raises :class:`BadInputError` for missing or non-compliant inputs and
    :class:`BackendUnavailableError` without TensorRT / a GPU.
    """
    paths = RunPaths(Path(run_dir))
    # the TensorRT-style Q/DQ twin of the calibration when the run wrote one, else model.int8.onnx
    int8 = paths.model_int8_trt_onnx if paths.model_int8_trt_onnx.is_file() else paths.pressed_onnx
    sources = {"int8": int8, "fp16": paths.model_onnx}
    for precision in cfg.precisions:
        if not sources[precision].is_file():
            step = "quantize" if precision == "int8" else "export"
            raise BadInputError(
                f"{sources[precision]}: missing; run `modelpress {step}` before building the {precision} engine"
            )
    if "int8" in cfg.precisions:
        require_trt_compatible(sources["int8"], require_per_channel_weights=True)
    require_tensorrt()
    gpu_identity()  # fail here, before the fp16 conversion writes anything, when there is no GPU
    cache = cfg.timing_cache_path(paths.root)
    built = []
    for precision in cfg.precisions:
        if precision == "int8":
            onnx_path, plan = sources["int8"], paths.model_plan
        else:
            onnx_path, plan = convert_to_fp16(sources["fp16"], paths.model_fp16_onnx), paths.model_fp16_plan
        built.append(build_engine(onnx_path, plan, cfg, precision=precision, timing_cache=cache, modality=modality))
    return tuple(built)


class TensorRTArtifact(RuntimeArtifact):
    """With ``[engine] enabled``: the TensorRT-style Q/DQ twin of the plan (symmetric, zero point 0;
    unless the int8 model already is one) and the engines built from it on this machine's GPU."""

    runtime = "tensorrt"

    def wanted(self, recipe: Any) -> bool:
        return recipe.engine is not None and recipe.engine.enabled

    def require(self, recipe: Any) -> None:  # no TensorRT or GPU: fail before export and quantization
        require_tensorrt()
        gpu_identity()

    def write(self, quant: Any, paths: Any, *, recipe: Any, task: Any) -> dict[str, Any]:
        if not quant.plan.cfg.tensorrt_readable:
            quant.write_tensorrt_twin(paths.model_int8_trt_onnx)
        log.info("building TensorRT engine(s)")
        return {"engines": list(build_engines(paths.root, recipe.engine, modality=task.modality))}

    def measured(self, paths: Any) -> list[tuple[str, Path]]:
        return [("tensorrt-int8", paths.model_plan)] if paths.model_plan.is_file() else []
