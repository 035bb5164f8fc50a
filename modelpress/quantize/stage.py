"""The quantize stage of a run: one calibration plan → ``model.int8.onnx`` (static, or the
accuracy-aware search), its per-node analysis (``analysis.json``, the sensitivity plot) and
``quantization.json``; the runtimes write their artifacts from the same plan (``runtimes.artifacts``).
``modelpress analyze`` (``modelpress.run_commands.analyze_run``) re-plans a finished run with it."""

from __future__ import annotations

import json
import logging
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from modelpress.errors import BadInputError
from modelpress.fileio import write_json
from modelpress.quantize.config import CALIBRATION_METHODS, QuantizeConfig
from modelpress.quantize.int8_classes import by_rule, classes_without, op_classes
from modelpress.quantize.static import QuantizeSummary, for_tensorrt, write_quantized
from modelpress.quantize.analysis import analyze_plan
from modelpress.quantize.auto import auto_quantize
from modelpress.quantize.static import plan_quantization
from modelpress.quantize.weight_only import quantize_weights_only
from modelpress.quantize.analysis import plot_errors
import time

log = logging.getLogger(__name__)


@dataclass
class QuantizeOutcome:
    summary: QuantizeSummary
    analysis: list  # NodeError, worst first
    auto: dict | None  # the accuracy-aware search (mode "auto")
    plan: Any = None  # quantize.static.QuantPlan of the written model
    analysis_section: dict | None = None
    int8_classes: list | None = None  # quantize.int8_classes decisions (select.int8_classes = "auto")

    def close(self) -> None:
        """Remove the plan's weights work folder (``offload``): after the runtimes' artifacts, before
        the bundle is published; nothing is written from the plan after."""
        if self.plan is not None:
            self.plan.close()

    def report_section(self, mode: str) -> dict[str, Any]:
        section = {**{k: v for k, v in self.summary.to_dict().items() if k != "tensors"}, "mode": mode}
        section["auto"] = self.auto
        if self.int8_classes is not None:
            section["int8_classes"] = [d.to_dict() for d in self.int8_classes]
        return section

    # the runtimes write their artifacts from the plan through these (runtimes sit below the quantizer)
    def pressed_is_qdq_form(self, *, without: Sequence[str] = ()) -> bool:
        """Whether the pressed file already is :meth:`write_qdq`'s graph (a Q/DQ plan with nothing
        left out and no OpenVINO-only sites), so a runtime may convert it as it is."""
        return self.plan.cfg.graph_format == "qdq" and not without and not self.plan.eltwise

    def write_qdq(self, out_path: Path, *, without: Sequence[str] = ()) -> QuantizeSummary:
        """The same plan in portable Q/DQ (what OpenVINO reads), the same nodes kept fp32, and a
        convolutional network's residual Add and pooling inputs int8 too; ``without``: op classes
        (``int8_classes``) left fp32 as well."""
        plan, keep = classes_without(self.plan, tuple(self.summary.fp32_nodes), without)
        return write_quantized(replace(plan, cfg=plan.cfg.with_(format="qdq")), out_path, keep_fp32=keep, eltwise=True)

    def rule_decisions(self, target: Any, runtime: str) -> list:
        """Each op class of the plan's Q/DQ form (the form with attention scores: what OpenVINO reads),
        int8 or fp32 by the rules measured for ``target``'s CPU level (``int8_classes.RULES``)."""
        qdq = replace(self.plan, cfg=self.plan.cfg.with_(format="qdq"))
        return by_rule(target, runtime, op_classes(qdq))

    def write_tensorrt_twin(self, out_path: Path) -> QuantizeSummary:
        """The same calibration as TensorRT reads it (``static.for_tensorrt``), the same nodes kept fp32."""
        return write_quantized(for_tensorrt(self.plan), out_path, keep_fp32=tuple(self.summary.fp32_nodes))


def quantize_model(
    onnx_path: Path,
    out_path: Path,
    feeds: Iterable[Mapping[str, np.ndarray]],
    cfg: QuantizeConfig,
    *,
    evaluate: Callable | None = None,
) -> QuantizeOutcome:
    """Static int8 (or the accuracy-aware search when ``cfg.mode == "auto"``) plus per-node analysis;
    ``"weight-only"``: MatMulNBits weights (``weight_only``; the calibration set only for the data-aware
    int4 methods), no activation plan and no analysis."""

    if cfg.mode == "auto":
        if evaluate is None:
            raise BadInputError('quantize.mode = "auto" needs an eval set and the teacher (use `modelpress run`)')
        result = auto_quantize(onnx_path, out_path, feeds, cfg, evaluate=evaluate)
        return QuantizeOutcome(result.summary, result.analysis, result.to_dict(), result.plan)  # type: ignore[arg-type]
    if cfg.mode == "weight-only":  # no calibration, no activation plan: nothing per node to analyze
        return QuantizeOutcome(quantize_weights_only(onnx_path, out_path, cfg, feeds), [], None, None)
    plan = plan_quantization(onnx_path, feeds, cfg)
    summary = write_quantized(plan, out_path)
    return QuantizeOutcome(summary, analyze_plan(plan, feeds), None, plan)


def write_analysis(errors: list, paths: Any, *, top: int = 15) -> dict[str, Any]:
    """analysis.json (every node) and plots/sensitivity.png; returns the report's summary of it."""

    rows = [e.to_dict() for e in errors]
    write_json(paths.analysis_json, rows)
    plot = plot_errors(errors, paths.sensitivity_plot)
    return {"nodes": len(rows), "worst": rows[:top], "plot": str(plot.relative_to(paths.root)) if plot else None}


def quantize_stage(
    paths: Any, feeds: Iterable[Mapping[str, np.ndarray]], cfg: QuantizeConfig, *, evaluate: Callable | None = None
) -> QuantizeOutcome:
    """``model.onnx`` → ``model.int8.onnx`` (+ analysis and quantization.json). Each runtime then
    writes its own artifact from the outcome's plan (``runtimes.artifacts``)."""
    log.info("quantizing to %s", paths.pressed_onnx)
    outcome = quantize_model(paths.model_onnx, paths.pressed_onnx, feeds, cfg, evaluate=evaluate)
    outcome.analysis_section = write_analysis(outcome.analysis, paths)
    write_json(paths.quantization_json, {**outcome.summary.to_dict(), "auto": outcome.auto})
    return outcome


def seed_variants(
    onnx_path: Path,
    feeds_by_seed: Iterable[tuple[int, Iterable[Mapping[str, np.ndarray]]]],
    outcome: QuantizeOutcome,
    cfg: QuantizeConfig,
    work: Path,
) -> list[tuple[int, Path, float]]:
    """The written model's calibration re-done on other samples (``quantize.calibration_seeds``):
    the same settings (the method and fp32 nodes the run chose), one model per seed, in ``work``.
    Returns (seed, path, calibration seconds) per variant."""

    chosen = cfg.with_(mode="static", calibration_method=outcome.summary.calibration_method)
    out = []
    for seed, feeds in feeds_by_seed:
        t0 = time.perf_counter()
        plan = plan_quantization(onnx_path, feeds, chosen)
        path = work / f"model.int8.seed{seed}.onnx"
        write_quantized(plan, path, keep_fp32=tuple(outcome.summary.fp32_nodes))
        out.append((seed, path, round(time.perf_counter() - t0, 2)))
    return out


def recorded_outcome(quantization_json: Path) -> QuantizeOutcome:
    """What a finished quantize stage chose, read back from its ``quantization.json`` (the
    calibration method and the fp32 nodes): enough for :func:`seed_variants` to calibrate the same
    plan again on other samples (``modelpress validate --recipe`` with ``calibration_seeds > 1``)."""
    try:
        done = json.loads(Path(quantization_json).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        done = None
    names = {f.name for f in fields(QuantizeSummary)}
    required = {f.name for f in fields(QuantizeSummary) if f.default is MISSING}
    if not isinstance(done, dict) or not required <= set(done):
        raise BadInputError(f"{quantization_json}: not a quantization record of `modelpress quantize`")
    if done["calibration_method"] not in CALIBRATION_METHODS:
        raise BadInputError(
            f"{quantization_json}: the model was quantized without calibration "
            f"({done['calibration_method']}); there is nothing to calibrate again"
        )
    return QuantizeOutcome(QuantizeSummary(**{k: v for k, v in done.items() if k in names}), [], done.get("auto"))
