"""The ``modelpress engine RUN_DIR`` stage: build the engines a recipe asks for, in one run folder.

Place in the pipeline: after ``quantize`` (and ``export``). Order of work, so that a machine
without TensorRT or a GPU fails before writing anything and leaves the ONNX artifacts as they were:
 1. check the Q/DQ model against TensorRT's rules (``checker``; needs no GPU),
 2. require TensorRT and a GPU,
 3. int8: ``model.int8.onnx`` -> ``model.plan`` + ``engine.json``,
 4. fp16: ``model.onnx`` -> ``model.fp16.onnx`` -> ``model.fp16.plan`` + ``engine.fp16.json``.
All builds share one timing cache (``timing.cache`` in the run folder by default).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from modelpress.errors import BadInputError
from modelpress.runtimes.tensorrt.checker import require_trt_compatible
from modelpress.runtimes.tensorrt.config import EngineConfig
from modelpress.runtimes.tensorrt.engine import build_engine
from modelpress.runtimes.tensorrt.fp16 import convert_to_fp16
from modelpress.runtimes.tensorrt.gpu import gpu_identity, require_tensorrt

# run-folder file names this stage reads and writes (mirror them in the run-folder paths module)
FP32_ONNX = "model.onnx"
INT8_ONNX = "model.int8.onnx"
#: the same calibration written as TensorRT-style Q/DQ (``[engine] enabled``, or the tensorrt preset's
#: model.int8.onnx itself): the engine is built from this one when it exists
INT8_TRT_ONNX = "model.int8.trt.onnx"
FP16_ONNX = "model.fp16.onnx"
INT8_PLAN = "model.plan"
FP16_PLAN = "model.fp16.plan"


def build_engines(run_dir: Path, cfg: EngineConfig) -> tuple[dict[str, Any], ...]:
    """Build every engine ``cfg.precisions`` asks for in ``run_dir``; return their metadata.

    Builds whether or not ``cfg.enabled`` is set (that key only decides whether ``modelpress run``
    calls this stage). Raises :class:`BadInputError` for missing or non-compliant inputs and
    :class:`BackendUnavailableError` without TensorRT / a GPU.
    """
    run_dir = Path(run_dir)
    int8 = run_dir / INT8_TRT_ONNX if (run_dir / INT8_TRT_ONNX).is_file() else run_dir / INT8_ONNX
    sources = {"int8": int8, "fp16": run_dir / FP32_ONNX}
    for precision in cfg.precisions:
        if not sources[precision].is_file():
            step = "quantize" if precision == "int8" else "export"
            raise BadInputError(f"{sources[precision]}: missing; run `modelpress {step}` before "
                                f"building the {precision} engine")
    if "int8" in cfg.precisions:
        require_trt_compatible(sources["int8"], require_per_channel_weights=True)
    require_tensorrt()
    gpu_identity()  # fail here, before the fp16 conversion writes anything, when there is no GPU
    cache = cfg.timing_cache_path(run_dir)
    built = []
    for precision in cfg.precisions:
        if precision == "int8":
            onnx_path, plan = sources["int8"], run_dir / INT8_PLAN
        else:
            onnx_path, plan = convert_to_fp16(sources["fp16"], run_dir / FP16_ONNX), run_dir / FP16_PLAN
        built.append(build_engine(onnx_path, plan, cfg, precision=precision, timing_cache=cache))
    return tuple(built)
