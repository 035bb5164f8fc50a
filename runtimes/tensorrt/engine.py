"""Build one TensorRT plan from one ONNX file, as a strongly typed network, and describe it.

Place in the pipeline: ``model.int8.onnx`` (Q/DQ) -> ``model.plan`` + ``engine.json``, and
``model.fp16.onnx`` -> ``model.fp16.plan`` + ``engine.fp16.json``. No INT8/FP16 builder flags and
no calibrator: precision comes from the ONNX itself (explicit Q/DQ scales from our ONNX Runtime
calibration, or fp16 tensors), which is the only mode TensorRT 11 keeps. The same scales then
serve both runtimes.

TensorRT API used (10.x; 11.x keeps it, with STRONGLY_TYPED always on): Builder,
create_network(STRONGLY_TYPED), OnnxParser.parse_from_file, IBuilderConfig.set_memory_pool_limit,
builder_optimization_level, create_optimization_profile / set_shape, create_timing_cache /
set_timing_cache / get_timing_cache().serialize(), build_serialized_network.

Not exercised in CI (no GPU there); written against the TensorRT 10 Python API docs.
"""

from __future__ import annotations

import datetime
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import onnx

from modelpress.errors import BadInputError, ModelpressError
from modelpress.fileio import fed_inputs, write_bytes
from modelpress.modalities import get_modality
from modelpress.runtimes.tensorrt.config import EngineConfig
from modelpress.runtimes.tensorrt.gpu import gpu_identity, require_tensorrt
from modelpress.runtimes.tensorrt.metadata import (
    EngineMetadata,
    engine_metadata_path,
    file_sha256,
    write_engine_metadata,
)

log = logging.getLogger(__name__)

_MIB = 1 << 20


def onnx_input_names(onnx_path: Path) -> tuple[str, ...]:
    """Graph inputs that are not initializers (weights are not loaded)."""
    if not onnx_path.is_file():
        raise BadInputError(f"{onnx_path}: no such ONNX file")
    return tuple(i.name for i in fed_inputs(onnx.load(str(onnx_path), load_external_data=False).graph))


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    cfg: EngineConfig,
    *,
    input_names: Sequence[str] | None = None,
    precision: str = "int8",
    timing_cache: Path | None = None,
    metadata_path: Path | None = None,
    modality: str = "text",
) -> dict[str, Any]:
    """Build ``plan_path`` from ``onnx_path`` and write its metadata; return that metadata.

    ``input_names`` defaults to the ONNX graph inputs; the ``modality`` (registry) makes the
    optimization profile for them from ``cfg``.
    ``precision`` is recorded (the graph decides the real types). ``timing_cache`` is loaded when
    present and saved after the build. ``metadata_path`` defaults to
    :func:`~runtimes.tensorrt.metadata.engine_metadata_path` of the plan.
    Raises :class:`BackendUnavailableError` without TensorRT or a GPU (nothing is written then).
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    names = tuple(input_names) if input_names is not None else onnx_input_names(onnx_path)
    if not onnx_path.is_file():
        raise BadInputError(f"{onnx_path}: no such ONNX file")
    try:
        profile = get_modality(modality).engine_profile(names, cfg)
    except BadInputError as exc:
        raise BadInputError(f"{onnx_path}: {exc}") from None
    trt = require_tensorrt()
    gpu = gpu_identity()
    logger = _make_logger(trt)

    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) so external-data weights beside the ONNX are found
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BadInputError(
            f"{onnx_path}: TensorRT's ONNX parser refused the model: "
            f"{errors[0] if errors else 'no error given'}" + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "")
        )
    network_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    if network_inputs != set(names):
        raise BadInputError(
            f"{onnx_path}: model inputs {sorted(network_inputs)} differ from the expected {sorted(names)}"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb * _MIB)
    if cfg.builder_optimization_level is not None:
        config.builder_optimization_level = cfg.builder_optimization_level
    trt_profile = builder.create_optimization_profile()
    for name, shapes in profile.items():
        trt_profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(trt_profile)
    cache = _attach_timing_cache(config, timing_cache)

    log.info("building %s from %s (TensorRT %s, %s)", plan_path.name, onnx_path.name, trt.__version__, gpu.name)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_seconds = time.perf_counter() - start
    if serialized is None:
        raise ModelpressError(
            f"{onnx_path}: TensorRT could not build an engine: {logger.last_error or 'see the TensorRT log above'}"
        )
    write_bytes(plan_path, memoryview(serialized))
    if cache is not None and timing_cache is not None:
        write_bytes(timing_cache, memoryview(config.get_timing_cache().serialize()))

    meta = EngineMetadata(
        plan=plan_path.name,
        plan_sha256=file_sha256(plan_path),
        source_onnx=onnx_path.name,
        precision=precision,
        tensorrt_version=trt.__version__,
        gpu_name=gpu.name,
        compute_capability=gpu.sm,
        inputs=names,
        outputs=tuple(network.get_output(i).name for i in range(network.num_outputs)),
        profiles=({n: {k: list(v) for k, v in s.items()} for n, s in profile.items()},),
        workspace_mb=cfg.workspace_mb,
        builder_optimization_level=cfg.builder_optimization_level,
        timing_cache=str(timing_cache) if timing_cache is not None else None,
        build_seconds=round(build_seconds, 3),
        built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    write_engine_metadata(meta, metadata_path or engine_metadata_path(plan_path))
    log.info("built %s in %.1f s", plan_path.name, build_seconds)
    return meta.to_dict()


def _network_flags(trt: Any) -> int:
    # TensorRT 11 deprecates the flag (strongly typed is always on) and may drop it later
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _attach_timing_cache(config: Any, path: Path | None) -> Any:
    """Load the timing cache (or start an empty one) and attach it; None when caching is off.

    A cache from another TensorRT version or GPU is not an error: the build starts from an empty
    cache and the file is overwritten afterwards.
    """
    if path is None:
        return None
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("%s: timing cache is from another TensorRT version or GPU; starting a new one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _make_logger(trt: Any) -> Any:
    """A TensorRT logger that forwards to ``logging`` and remembers the last error for messages."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.last_error: str | None = None

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.last_error = msg
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Logger()
