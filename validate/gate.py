"""The gate: did the candidate keep the teacher's primary metric within ``max_drop`` points — and
how sure is that?

The task registry says which metric is primary and in which direction each metric is better, so
the drop is always "how much worse", whatever the metric (KL rising is a drop). With the drop's
paired 95 % interval (``measures.uncertainty``) the verdict follows ``gate.policy``:

* ``point``      pass when the measured drop ≤ max_drop (the interval is reported, not used);
* ``confident``  pass only when the interval's upper end ≤ max_drop: a release gate that a lucky
                 draw of the eval set cannot pass;
* ``lenient``    fail only when the interval's lower end > max_drop: a nightly check that noise
                 alone cannot fail.

No verdict on too little evidence: each task declares the fewest units its gate decides on
(``Task.min_n``, in the gated metric's interval's unit: pairs, texts, images, sentences, windows);
with fewer the gate FAILS, whatever the policy, with the note "too small to decide: n=…, need ≥ …"
(in report.json's gate section; ``modelpress gate`` re-deciding the report says the same). When
the interval is merely wider than max_drop, the gate line says the eval set is too small to decide
at that threshold, and how many examples would be needed. ``gate.max_latency_ratio`` adds a speed
condition: the candidate's p50 ÷ the teacher's at ``gate.latency_shape`` must not exceed it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping, Sequence

from modelpress.errors import BadInputError
from modelpress.tasks import HIGHER, get_task
import math

POLICIES = ("point", "confident", "lenient")


@dataclass(frozen=True)
class GateResult:
    metric: str
    teacher: float  # points (metric × 100)
    candidate: float
    drop: float  # how much worse the candidate is, points
    max_drop: float
    passed: bool
    candidate_name: str
    policy: str = "point"
    n: int | None = None  # examples (pairs, texts, sentences) the interval resamples
    unit: str | None = None
    drop_ci95: tuple[float, float] | None = None
    method: str | None = None
    mcnemar_p: float | None = None
    note: str | None = None  # "the eval set is too small to decide ..." when it is
    latency_shape: str | None = None
    latency_ratio: float | None = None  # candidate ÷ reference time at latency_shape
    max_latency_ratio: float | None = None
    latency_ratio_ci95: tuple[float, float] | None = None  # over the interleaved rounds (validate.select)
    latency_reference: str | None = None  # what latency_ratio divides by (ORT fp32; reports before: the teacher)
    choice: str | None = None  # the selection's line: the bundle's default and why

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("drop_ci95", "latency_ratio_ci95"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GateResult":
        d = dict(d)
        for key in ("drop_ci95", "latency_ratio_ci95"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        text = (
            f"gate {verdict}: {self.candidate_name} {self.metric} {self.candidate:.2f} vs teacher "
            f"{self.teacher:.2f}, drop {self.drop:.2f}"
        )
        if self.drop_ci95 is not None:
            lo, hi = self.drop_ci95
            text += (
                f" [{lo:.2f}, {hi:.2f}] points (95% paired bootstrap, n={self.n} {self.unit}"
                + (f", McNemar p={self.mcnemar_p:.3g}" if self.mcnemar_p is not None else "")
                + f"; max {self.max_drop:.2f}, policy {self.policy})"
            )
        else:
            text += f" points (max {self.max_drop:.2f})"
        if self.latency_ratio is not None:
            ci = self.latency_ratio_ci95
            text += (
                f"; latency {self.latency_shape} {self.latency_ratio:.3f}x {self.latency_reference or 'teacher'}"
                + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
                + f" (max {self.max_latency_ratio:.3f})"
            )
        if self.choice:
            text += f"\n{self.choice}"
        if self.note:
            text += f"\n{self.note}"
        return text


def decide(
    task,
    teacher_metrics: Mapping[str, float],
    candidate_metrics: Mapping[str, float],
    *,
    max_drop: float,
    metric: str = "auto",
    candidate_name: str = "int8",
    policy: str = "point",
    intervals: Mapping[str, Mapping[str, Any]] | None = None,
    latency: Mapping[str, float] | None = None,
    max_latency_ratio: float | None = None,
    latency_shape: str | None = None,
    latency_ci95: Mapping[str, Sequence[float]] | None = None,
    latency_reference: str | None = None,
) -> GateResult:
    """The verdict. ``intervals``: per metric the report's ``uncertainty`` entry (``n``, ``unit``,
    ``drop_ci95``, ``method``, ``mcnemar_p``); ``latency``: the candidate ÷ reference ratios per
    shape key, ``latency_ci95`` their 95 % intervals where timed round by round: then the speed
    condition fails only when the whole interval is above ``max_latency_ratio`` (noise cannot fail it)."""
    task = get_task(task) if isinstance(task, str) else task
    if policy not in POLICIES:
        raise BadInputError(f"gate.policy: expected one of {', '.join(POLICIES)}, got {policy!r}")
    name = task.primary_metric(set(candidate_metrics)) if metric == "auto" else metric
    if name not in candidate_metrics or name not in teacher_metrics:
        raise BadInputError(
            f"gate.metric: {name!r} was not measured; available: {', '.join(sorted(candidate_metrics))}"
        )
    t, c = 100.0 * teacher_metrics[name], 100.0 * candidate_metrics[name]
    drop = round((t - c) if task.direction(name) == HIGHER else (c - t), 4)
    iv = (intervals or {}).get(name)
    short = _too_few(task, iv, intervals)
    ci = tuple(iv["drop_ci95"]) if iv else None
    if ci is None or policy == "point":
        passed = drop <= max_drop
    elif policy == "confident":
        passed = ci[1] <= max_drop
    else:
        passed = ci[0] <= max_drop
    notes = [short] if short else []
    if ci is not None and ci[1] - ci[0] > max_drop:
        needed = _examples_needed(iv["n"], ci[1] - ci[0], max_drop)
        notes.append(
            f"note: the eval set is too small to decide at max_drop {max_drop:.2f}: the 95% interval "
            f"is {ci[1] - ci[0]:.2f} points wide over {iv['n']} {iv['unit']}"
            + (f"; about {needed} would narrow it to {max_drop:.2f}" if needed else "")
        )
    note = "\n".join(notes) or None
    ratio = ratio_ci = None
    if max_latency_ratio is not None:
        ratios = dict(latency or {})
        shape = latency_shape or (next(reversed(ratios), None) if ratios else None)
        key = f"{shape}_p50" if shape and not str(shape).endswith("_p50") else shape
        if key not in ratios:
            raise BadInputError(
                f"gate.latency_shape: {shape!r} was not timed; timed: "
                f"{', '.join(k[:-4] for k in ratios if k.endswith('_p50')) or 'nothing'}"
            )
        ratio, latency_shape = ratios[key], key[:-4] if key.endswith("_p50") else key
        ratio_ci = (latency_ci95 or {}).get(key)
        ratio_ci = (float(ratio_ci[0]), float(ratio_ci[1])) if ratio_ci else None
        passed = passed and (ratio_ci[0] if ratio_ci else ratio) <= max_latency_ratio
    passed = passed and not short
    return GateResult(
        name,
        round(t, 4),
        round(c, 4),
        drop,
        max_drop,
        passed,
        candidate_name,
        policy,
        iv["n"] if iv else None,
        iv["unit"] if iv else None,
        ci,
        iv["method"] if iv else None,
        iv.get("mcnemar_p") if iv else None,
        note,
        latency_shape if ratio is not None else None,
        ratio,
        max_latency_ratio,
        ratio_ci if ratio is not None else None,
        latency_reference if ratio is not None else None,
    )


def _too_few(task, iv: Mapping[str, Any] | None, intervals: Mapping[str, Mapping[str, Any]] | None) -> str | None:
    """ "too small to decide: ..." when the gated metric rests on fewer units than the task's
    minimum. A metric without an interval of its own (min_cosine) is measured on the eval set the
    others resample: the most units any of them has. No intervals at all (the accuracy-aware
    search's quick check) is no verdict, so no rule."""
    if intervals is None:
        return None
    if iv is None:
        iv = max(intervals.values(), key=lambda other: other["n"], default=None)
    n, unit = (iv["n"], iv["unit"]) if iv is not None else (0, "units")
    if n >= task.min_n:
        return None
    return (
        f"too small to decide: n={n} {unit}, need ≥ {task.min_n} for a {task.name} verdict; give more evaluation data"
    )


def _examples_needed(n: int, width: float, max_drop: float) -> int | None:
    return None if max_drop <= 0 else int(math.ceil(n * (width / max_drop) ** 2))


def judged_names(report: Mapping) -> list[str]:
    """Every model the run's gate judged: the shipped model on each of the bundle's runtimes and
    its calibration-seed twins (reports from before those existed: the gate's candidate)."""
    names = [
        *(report.get("runtimes") or {}).values(),
        *(c["name"] for c in (report.get("calibration_seeds") or {}).get("candidates", ())),
        report["gate"]["candidate_name"],
    ]
    return [n for n in dict.fromkeys(names) if n in report["models"]]


def worst(results: Sequence[GateResult]) -> GateResult:
    """The verdict of several gated models: a failing one, else the largest drop."""
    return max(results, key=lambda g: (not g.passed, g.drop))


def gate_report(
    report: Mapping, *, max_drop: float | None = None, metric: str | None = None, policy: str | None = None
) -> GateResult:
    """Re-decide the gate from a written report.json (``modelpress gate``): every model the run
    judged, the worst verdict."""
    try:
        models = report["models"]
        gate = report["gate"]
        task = get_task(report["task"])
        speed = _recorded_speed(report, gate)
        names = judged_names(report)
        chosen = (report.get("selection") or {}).get("chosen")
        if chosen and chosen not in names and report["selection"].get("passed"):
            names = [chosen]  # the default is another candidate than the int8 plan: it is what was gated
        result = worst(
            [
                decide(
                    task,
                    models["teacher"]["metrics"],
                    models[cand]["metrics"],
                    max_drop=gate["max_drop"] if max_drop is None else max_drop,
                    metric=metric or gate.get("metric", "auto"),
                    candidate_name=cand,
                    policy=policy or gate.get("policy", "point"),
                    intervals=(report.get("uncertainty") or {}).get(cand),
                    **speed,
                )
                for cand in names
            ]
        )
        return replace(result, choice=gate.get("choice"))
    except (KeyError, TypeError) as exc:
        raise BadInputError(f"report.json lacks the key {exc} needed by the gate") from None


def _recorded_speed(report: Mapping, gate: Mapping) -> dict[str, Any]:
    """The speed condition as the run measured it: the default's ratio and interval (reports before
    selection: each candidate's p50 ÷ the teacher's, from ``ratios``)."""
    if gate.get("max_latency_ratio") is None:
        return {}
    if gate.get("latency_reference") is not None or "selection" in report:
        if gate.get("latency_ratio") is None:
            return {}
        key = f"{gate['latency_shape']}_p50"
        ci = gate.get("latency_ratio_ci95")
        return {
            "latency": {key: gate["latency_ratio"]},
            "latency_ci95": {key: ci} if ci else None,
            "latency_shape": gate["latency_shape"],
            "max_latency_ratio": gate["max_latency_ratio"],
            "latency_reference": gate.get("latency_reference"),
        }
    ratios = report.get("ratios") or {}
    shipped = next(iter((report.get("runtimes") or {}).values()), gate["candidate_name"])
    return {
        "latency": ratios.get(shipped),
        "max_latency_ratio": gate["max_latency_ratio"],
        "latency_shape": gate.get("latency_shape"),
    }
