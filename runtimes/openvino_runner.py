"""OpenVINO CPU runner: an OpenVINO IR (``openvino/model.xml``) or an ONNX file behind the Runner
interface, and the conversion of our Q/DQ graph to IR.

OpenVINO reads ONNX QuantizeLinear/DequantizeLinear as FakeQuantize and runs the int8 parts with
its own CPU kernels, so the IR carries *our* calibration (ranges, SmoothQuant, padding-free
statistics, per-node choices). Settings measured to matter here (../shared/PEERS.md):
``PERFORMANCE_HINT = LATENCY`` with one stream and ``INFERENCE_NUM_THREADS`` set (the THROUGHPUT
hint splits two cores into two streams and serves one request with one thread), and an explicit
``INFERENCE_PRECISION_HINT``: on AVX512-BF16 CPUs the plugin otherwise runs float parts in bf16;
on a CPU without bf16 a ``bf16`` request runs in f32 (``effective_precision`` says which ran).
``ov.save_model`` compresses weights to fp16 unless told not to. ``openvino`` is an optional
dependency (``pip install 'modelpress[openvino]'``), imported only when an OpenVINO runner opens
or an IR is written.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from modelpress.errors import BackendUnavailableError, BadInputError
from modelpress.runtimes.artifacts import RuntimeArtifact
from modelpress.runtimes.artifacts import FP32_MODEL, Offer
from modelpress.runtimes.base import Runner
from modelpress.runtimes.target import resolve_target
import tempfile

log = logging.getLogger(__name__)

PRECISIONS = ("f32", "bf16")


def require_openvino():
    try:
        return importlib.import_module("openvino")
    except ImportError:
        raise BackendUnavailableError(
            "the openvino runtime needs the openvino package: pip install 'modelpress[openvino]'"
        ) from None


def checked_precision(precision: str) -> str:
    """``precision`` (``validate.openvino_precision``, ``load(..., precision=)``) when OpenVINO takes it."""
    if precision not in PRECISIONS:
        raise BadInputError(f"openvino precision: expected one of f32, bf16, got {precision!r}")
    return precision


class OpenVINORunner(Runner):
    def __init__(
        self, model_path: str | Path, *, threads: int = 0, precision: str = "f32", name: str | None = None
    ) -> None:
        checked_precision(precision)
        self.model_path = Path(model_path)
        self.threads = threads
        self.precision = precision
        self.name = name or f"openvino-{self.precision}"
        self.effective_precision: str | None = None
        self._compiled: Any = None
        self._request: Any = None

    @classmethod
    def options_from(cls, validate_cfg) -> dict:
        return {"precision": validate_cfg.openvino_precision}

    @classmethod
    def graph_inputs(cls, path) -> tuple[str, ...]:
        ov = _existing(path)
        with _readable(path, "read"):
            return tuple(p.get_any_name() for p in ov.Core().read_model(str(path)).inputs)

    def _load(self) -> None:
        ov = _existing(self.model_path)
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": str(self.threads or os.cpu_count() or 1),
            "INFERENCE_PRECISION_HINT": self.precision,
        }
        with _readable(self.model_path, "load"):
            self._compiled = ov.Core().compile_model(str(self.model_path), "CPU", config)
        ran = self._compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: f32, bf16
        self.effective_precision = ran.get_type_name() if hasattr(ran, "get_type_name") else str(ran)
        self._request = self._compiled.create_infer_request()
        self._inputs = tuple(p.get_any_name() for p in self._compiled.inputs)
        self._outputs = tuple(p.get_any_name() for p in self._compiled.outputs)

    def close(self) -> None:
        self._request = None
        self._compiled = None

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._inputs

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self._request.infer({k: np.ascontiguousarray(v) for k, v in self.select(feed).items()})
        # copies: the request reuses its output buffers on the next call
        return {name: np.array(result[port]) for name, port in zip(self._outputs, self._compiled.outputs)}


def _existing(path: str | Path):
    """The openvino module, once ``path`` is known to exist."""
    ov = require_openvino()
    if not Path(path).is_file():
        raise BadInputError(f"{path}: no such OpenVINO IR or ONNX file")
    return ov


@contextlib.contextmanager
def _readable(path: str | Path, verb: str):
    """OpenVINO reports unreadable and invalid models as RuntimeError: one line of it, exit 2."""
    try:
        yield
    except RuntimeError as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), "unreadable")
        raise BadInputError(f"{path}: OpenVINO cannot {verb} it ({first.strip()[:200]})") from None


def convert_to_ir(onnx_path: str | Path, xml_path: str | Path) -> Path:
    """ONNX → OpenVINO IR (``.xml`` + ``.bin``), fp32 weights kept (no fp16 compression); written
    under temporary names and renamed, the weights first."""
    ov = require_openvino()
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    model = ov.convert_model(str(onnx_path))
    tmp = xml_path.with_name(f".{xml_path.stem}.{os.getpid()}.xml")
    try:
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), xml_path.with_suffix(".bin"))
        os.replace(tmp, xml_path)
    finally:
        for leftover in (tmp, tmp.with_suffix(".bin")):
            leftover.unlink(missing_ok=True)
    return xml_path


class OpenVINOArtifact(RuntimeArtifact):
    """OpenVINO ships ``openvino/model.xml``: the IR of the same plan (:func:`write_openvino_ir`)."""

    runtime = "openvino"

    def require(self, recipe: Any) -> None:
        require_openvino()

    def write(self, quant: Any, paths: Any, *, recipe: Any, task: Any) -> dict[str, Any]:
        """The IR; with ``select.int8_classes = "auto"`` the op classes whose int8 OpenVINO runs
        slower than f32 on the target (``quantize.int8_classes.RULES``: int8 FullyConnected on AVX2)
        stay f32 in it."""
        if recipe.select.int8_classes != "auto" or quant.plan is None:
            write_openvino_ir(quant, paths.pressed_onnx, paths.openvino_xml)
            return {}
        decisions = quant.rule_decisions(resolve_target(recipe.target), self.runtime)
        without = tuple(d.op_class for d in decisions if not d.int8)
        write_openvino_ir(quant, paths.pressed_onnx, paths.openvino_xml, without=without)
        return {"openvino_int8_classes": [d.to_dict() for d in decisions]}

    def offers(self, *, recipe: Any, target: Any) -> tuple[list[Any], list[str]]:
        """Beside the int8 IR: the fp32 export run in f32, and in bf16 where the target has bf16 dot
        products and is this machine (a bf16 hint elsewhere runs f32, so its timing would say nothing)."""
        offers, notes = super().offers(recipe=recipe, target=target)
        wanted = recipe.select.candidates
        if "fp32" in wanted:
            offers.append(Offer("openvino-f32", self.runtime, "fp32", FP32_MODEL, {"precision": "f32"}))
        if "bf16" in wanted and target.has_bf16 and target.detected:
            offers.append(Offer("openvino-bf16", self.runtime, "bf16", FP32_MODEL, {"precision": "bf16"}))
        elif "bf16" in wanted:
            notes.append(f"openvino: no bf16 candidate (the target {target.name} has no bf16 dot products here)")
        return offers, notes


def write_openvino_ir(outcome: Any, int8_onnx: Path, xml_path: Path, *, without: tuple[str, ...] = ()) -> Path:
    """The written int8 model as OpenVINO IR: the same plan (calibration, SmoothQuant, fp32 nodes)
    in portable Q/DQ, which OpenVINO reads as FakeQuantize and runs with its int8 kernels (the
    ``ort`` format's MatMulIntegerToFloat is an ONNX Runtime contrib op OpenVINO cannot read).
    Where the plan quantizes attention scores (``quantize.attention_scores``, on by ``"auto"`` for
    VNNI/AMX targets) the Q/DQ form carries them: symmetric int8 Q and K projection outputs, which
    the plugin runs through its int8 MHA kernel (the Q·Kᵀ MatMuls are fp32 nodes of the ``ort``
    graph, and ``keep_fp32`` names weight targets only). A convolutional network's residual Add and
    pooling inputs are int8 in the IR only (``QuantPlan.eltwise``: NNCF's placement; OpenVINO then
    keeps the data int8 between blocks). ``without``: op classes (``quantize.int8_classes``) left f32
    in the IR."""

    log.info("converting the int8 model to OpenVINO IR (%s)", xml_path)
    if outcome.pressed_is_qdq_form(without=without):
        return convert_to_ir(int8_onnx, xml_path)
    with tempfile.TemporaryDirectory(prefix=".openvino-", dir=xml_path.parent.parent) as work:
        qdq = Path(work) / "model.int8.qdq.onnx"
        outcome.write_qdq(qdq, without=without)
        return convert_to_ir(qdq, xml_path)
