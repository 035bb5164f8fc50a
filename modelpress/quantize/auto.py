"""Accuracy-aware quantization (``quantize.mode = "auto"``): search until the gate passes.

1. Calibration-method search: plan with each of minmax / percentile / entropy (same memory bound),
   write, evaluate with the gate's metric; keep the best plan (with ``auto_sensitivity = "output"``
   and none passing: the one whose int8 outputs are closest to fp32's).
2. If it still fails the gate: per-node analysis of that plan, then return the most sensitive nodes
   to fp32, greedily from the worst (1, 2, 4, … nodes), until the gate passes; then prune back the
   ones not needed (re-quantize each kept node, least sensitive first, if the gate still passes).
   Most sensitive: the lowest SQNR (``analysis``), or with ``auto_sensitivity = "output"`` the
   largest fall of the model's output error when the node alone is fp32 (``sensitivity``).
3. Choose the passing candidate with the most int8 nodes (ties: better metric); if none passes, the
   best candidate is written anyway and the result says so, with every candidate tried.
Evaluation is a callable supplied by the caller (the pipeline measures through ONNX Runtime),
so this module knows nothing of tasks or metrics.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from modelpress.export.names import module_names
from modelpress.quantize.analysis import NodeError, analyze_plan
from modelpress.quantize.config import CALIBRATION_METHODS, QuantizeConfig
from modelpress.quantize.sensitivity import OutputSensitivity, int8_output_rms, output_sensitivity
from modelpress.quantize.static import QuantizeSummary, QuantPlan, plan_quantization, write_quantized

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    metric: float  # the gate metric, in points (× 100)
    drop: float  # how much worse than the teacher, points (ranks candidates: lower is better)
    passed: bool
    latency_ms: float  # p50 at the evaluator's reference shape


@dataclass(frozen=True)
class Candidate:
    index: int
    calibration_method: str
    fp32_nodes: tuple[str, ...]
    fp32_modules: tuple[str, ...]  # the same nodes as module paths (the ONNX name where none is known)
    int8_nodes: int
    metric: float
    drop: float
    passed: bool
    latency_ms: float


@dataclass
class AutoResult:
    candidates: list[Candidate] = field(default_factory=list)
    chosen: int = -1
    passed: bool = False
    analysis: list[NodeError] = field(default_factory=list)
    sensitivity: list[OutputSensitivity] = field(default_factory=list)  # auto_sensitivity = "output" only
    method_output_rms: dict[str, float] = field(default_factory=dict)  # the same: each method's plain int8 error
    summary: QuantizeSummary | None = None
    plan: QuantPlan | None = None

    def to_dict(self) -> dict:
        return {
            "candidates": [asdict(c) for c in self.candidates],
            "chosen": self.chosen,
            "passed": self.passed,
            "sensitivity": [s.to_dict() for s in self.sensitivity] or None,
            "method_output_rms": self.method_output_rms or None,
        }


def _better_base(cand: Candidate, best: Candidate, output_rms: Mapping[str, float]) -> bool:
    """Whether ``cand``'s plan is a better base for the node search than ``best``'s: a passing one wins; else
    the lower drop, or with output sensitivity (``output_rms`` by method) the lower output error, since the gate's
    metric on a finite eval set moves in coarse steps (top-1 agreement over 600 queries: 0.17 points, one query)
    and ties or flips on a few items, while the output error is continuous."""
    if cand.passed != best.passed:
        return cand.passed
    if output_rms and not cand.passed:
        return output_rms[cand.calibration_method] < output_rms[best.calibration_method]
    return cand.drop < best.drop


def auto_quantize(
    model_path: str | Path,
    out_path: str | Path,
    feeds: Iterable[Mapping[str, np.ndarray]],
    cfg: QuantizeConfig,
    *,
    evaluate: Callable[[Path], Evaluation],
    methods: tuple[str, ...] = CALIBRATION_METHODS,
) -> AutoResult:
    result = AutoResult()
    budget = cfg.max_candidates
    with tempfile.TemporaryDirectory(prefix="modelpress-auto-", dir=Path(out_path).parent) as tmp:
        work = Path(tmp)

        def trial(plan: QuantPlan, keep: tuple[str, ...]) -> Candidate:
            path = work / f"candidate{len(result.candidates)}.onnx"
            summary = write_quantized(plan, path, keep_fp32=keep)
            ev = evaluate(path)
            modules = module_names(plan.model)
            cand = Candidate(
                len(result.candidates),
                plan.cfg.calibration_method,
                keep,
                tuple(modules.get(n, n) for n in keep),
                len(summary.quantized_nodes),
                round(ev.metric, 4),
                round(ev.drop, 4),
                ev.passed,
                round(ev.latency_ms, 3),
            )
            result.candidates.append(cand)
            log.info(
                "auto candidate %d: %s, %d fp32 node(s): metric %.3f, drop %.3f → %s",
                cand.index,
                cand.calibration_method,
                len(keep),
                cand.metric,
                cand.drop,
                "pass" if cand.passed else "fail",
            )
            path.unlink()
            return cand

        # set by the first trial (the budget is at least one candidate); Any: mypy cannot see the loop runs
        best_plan: Any = None
        best: Any = None
        for method in methods:
            if len(result.candidates) >= budget:
                break
            plan = plan_quantization(model_path, feeds, cfg.with_(calibration_method=method, mode="static"))
            cand = trial(plan, ())
            if cfg.auto_sensitivity == "output":
                result.method_output_rms[method] = int8_output_rms(plan, model_path, feeds)
            if best is None or _better_base(cand, best, result.method_output_rms):
                best_plan, best = plan, cand
            if cand.passed:
                break  # full int8 passes: more methods cannot add int8 nodes
        result.plan = best_plan
        result.analysis = analyze_plan(best_plan, feeds)

        if not best.passed:
            order = [e.node for e in result.analysis]  # worst first
            if cfg.auto_sensitivity == "output":
                result.sensitivity = output_sensitivity(best_plan, model_path, feeds)
                order = [s.node for s in result.sensitivity]
            k, passing = 1, None
            while len(result.candidates) < budget and k <= len(order):
                cand = trial(best_plan, tuple(order[:k]))
                if cand.passed:
                    passing = cand
                    break
                k = min(k * 2, len(order)) if k < len(order) else k + 1
            if passing is not None:
                keep = list(passing.fp32_nodes)
                for node in reversed(list(passing.fp32_nodes)):  # least sensitive first
                    if len(result.candidates) >= budget or len(keep) == 1:
                        break
                    trial_keep = tuple(n for n in keep if n != node)
                    if trial(best_plan, trial_keep).passed:
                        keep = list(trial_keep)

        passed = [c for c in result.candidates if c.passed and c.calibration_method == best.calibration_method]
        passed = passed or [c for c in result.candidates if c.passed]
        if passed:
            chosen = max(passed, key=lambda c: (c.int8_nodes, -c.drop))
        else:
            chosen = min(result.candidates, key=lambda c: c.drop)
        if chosen.calibration_method != best_plan.cfg.calibration_method:
            best_plan = plan_quantization(
                model_path, feeds, cfg.with_(calibration_method=chosen.calibration_method, mode="static")
            )
            result.plan = best_plan
        result.chosen = chosen.index
        result.passed = chosen.passed
        result.summary = write_quantized(best_plan, out_path, keep_fp32=chosen.fp32_nodes)
    return result
