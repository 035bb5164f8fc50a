"""The gate: did the candidate keep the teacher's primary metric within ``max_drop`` points?

The task registry says which metric is primary and in which direction each metric is better, so
the drop is always "how much worse", whatever the metric (KL rising is a drop)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

from modelpress.errors import BadInputError
from modelpress.tasks import HIGHER, get_task


@dataclass(frozen=True)
class GateResult:
    metric: str
    teacher: float          # points (metric × 100)
    candidate: float
    drop: float             # how much worse the candidate is, points
    max_drop: float
    passed: bool
    candidate_name: str

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (f"gate {verdict}: {self.candidate_name} {self.metric} {self.candidate:.2f} vs teacher "
                f"{self.teacher:.2f}, drop {self.drop:.2f} points (max {self.max_drop:.2f})")


def decide(task, teacher_metrics: Mapping[str, float], candidate_metrics: Mapping[str, float], *,
           max_drop: float, metric: str = "auto", candidate_name: str = "int8") -> GateResult:
    task = get_task(task) if isinstance(task, str) else task
    name = task.primary_metric(set(candidate_metrics)) if metric == "auto" else metric
    if name not in candidate_metrics or name not in teacher_metrics:
        raise BadInputError(f"gate.metric: {name!r} was not measured; available: {', '.join(sorted(candidate_metrics))}")
    t, c = 100.0 * teacher_metrics[name], 100.0 * candidate_metrics[name]
    drop = (t - c) if task.direction(name) == HIGHER else (c - t)
    return GateResult(name, round(t, 4), round(c, 4), round(drop, 4), max_drop, round(drop, 4) <= max_drop, candidate_name)


def gate_report(report: Mapping, *, max_drop: float | None = None, metric: str | None = None) -> GateResult:
    """Re-decide the gate from a written report.json (``modelpress gate``)."""
    try:
        models = report["models"]
        gate = report["gate"]
        task = get_task(report["task"])
        cand = gate["candidate_name"]
        return decide(task, models["teacher"]["metrics"], models[cand]["metrics"],
                      max_drop=gate["max_drop"] if max_drop is None else max_drop,
                      metric=metric or gate.get("metric", "auto"), candidate_name=cand)
    except (KeyError, TypeError) as exc:
        raise BadInputError(f"report.json lacks the key {exc} needed by the gate") from None
