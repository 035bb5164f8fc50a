"""Selection: which of the validated candidates the bundle opens by default.

Validation times every candidate (the int8 plan, fp32 and bf16 on each of the bundle's runtimes)
interleaved, round by round, beside ONNX Runtime fp32, the reference. This module is a pure
function from those timings and the accuracy verdicts to a choice, so the choice is the same
whenever the timings are:

* a latency ratio (candidate ÷ reference) carries a 95 % paired bootstrap interval over the
  interleaved rounds (at a fixed shape: the ratio of the rounds' medians; on the eval workload: of
  the summed batch times, each batch timed for every candidate in turn);
* a candidate is eligible when its accuracy verdict passed and its ratio interval is not wholly
  above ``gate.max_latency_ratio`` (1.0: nothing slower than ORT fp32 is ever the default);
* the fastest eligible candidate wins, unless the interval of its ratio to a smaller eligible
  candidate contains 1: then the smaller artifact wins (noise must not buy megabytes).

``MODELPRESS_SLOW_CANDIDATE`` (``name=ms[,name=ms]``) adds a sleep to a candidate's every timed
call: the tests' hook for a candidate made slower on purpose.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from modelpress.errors import BadInputError
from modelpress.runtimes.artifacts import Offer

#: the recipe's ``select.shape`` for the eval workload
WORKLOAD = "workload"
BOOTSTRAP_RESAMPLES = 2000
SLOW_ENV = "MODELPRESS_SLOW_CANDIDATE"


def slowed(name: str, call: Callable[[], Any]) -> Callable[[], Any]:
    """``call``, slower by what ``MODELPRESS_SLOW_CANDIDATE`` gives ``name`` (a test hook)."""
    delay = 0.0
    for item in filter(None, os.environ.get(SLOW_ENV, "").split(",")):
        who, _, ms = item.partition("=")
        if who.strip() == name:
            delay = float(ms) / 1e3
    if not delay:
        return call

    def slow() -> Any:
        time.sleep(delay)
        return call()

    return slow


@dataclass(frozen=True)
class Ratio:
    value: float  # candidate ÷ reference (< 1: faster)
    ci95: tuple[float, float]  # 95 % paired bootstrap interval over the interleaved rounds

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci95": list(self.ci95)}


def ratio_interval(candidate: Sequence[float], reference: Sequence[float], *, stat: str = "median", seed: int = 0):
    """Candidate ÷ reference time with its 95 % percentile-bootstrap interval; the two sequences are
    paired (element k of both timed in the same interleaved round). ``stat``: ``"median"`` (a fixed
    shape, the ratio of p50s) or ``"sum"`` (the eval workload: the ratio of total times)."""
    c, r = np.asarray(candidate, dtype=float), np.asarray(reference, dtype=float)
    if c.shape != r.shape or c.size == 0:
        raise ValueError(f"paired timings needed, got {c.size} and {r.size}")
    reduce = np.median if stat == "median" else np.sum
    value = float(reduce(c) / reduce(r))
    idx = np.random.default_rng(seed).integers(0, c.size, size=(BOOTSTRAP_RESAMPLES, c.size))
    boots = reduce(c[idx], axis=1) / reduce(r[idx], axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return Ratio(round(value, 4), (round(float(lo), 4), round(float(hi), 4)))


@dataclass(frozen=True)
class Candidate:
    """One artifact the bundle could open by default, as validation saw it."""

    name: str  # the report's model name
    runtime: str
    precision: str  # int8 | fp32 | bf16 | weight-only
    file: str  # relative to the bundle
    size_mb: float | None
    accuracy_passed: bool
    drop: float | None = None
    drop_ci95: tuple[float, float] | None = None
    options: Mapping[str, Any] | None = None  # the runner's options (OpenVINO's precision)


@dataclass(frozen=True)
class Choice:
    chosen: str
    reason: str
    eligible: tuple[str, ...]
    ratios: Mapping[str, Ratio]  # each candidate ÷ the reference at the selection shape
    passed: bool  # False: no candidate but the reference passed accuracy

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eligible"] = list(self.eligible)
        d["ratios"] = {k: r.to_dict() for k, r in self.ratios.items()}
        return d


def choose(
    candidates: Sequence[Candidate],
    timings: Mapping[str, Sequence[float]],
    *,
    reference: str,
    max_latency_ratio: float,
    shape: str,
    stat: str = "median",
    target: str = "",
) -> Choice:
    """The default artifact: the fastest eligible candidate (module docstring), from per-round
    ``timings`` at ``shape`` and each candidate's accuracy verdict. Deterministic."""
    by_name = {c.name: c for c in candidates}
    ratios = {c.name: ratio_interval(timings[c.name], timings[reference], stat=stat) for c in candidates}
    eligible = [c.name for c in candidates if c.accuracy_passed and ratios[c.name].ci95[0] <= max_latency_ratio]
    if reference not in eligible:  # the reference is the floor: nothing slower, and it is always there
        eligible.append(reference)
    fastest = min(eligible, key=lambda n: (ratios[n].value, _size(by_name[n]), n))
    chosen = fastest
    for name in sorted(eligible, key=lambda n: (_size(by_name[n]), n)):
        if _size(by_name[name]) >= _size(by_name[fastest]):
            break
        between = ratio_interval(timings[name], timings[fastest], stat=stat)
        if between.ci95[0] <= 1.0 <= between.ci95[1]:
            chosen = name
            break
    # the reference alone passing accuracy is no pass: the run pressed nothing good enough
    passed = any(c.accuracy_passed for c in candidates if c.name != reference)
    reason = _reason(by_name, ratios, timings, chosen, fastest, eligible, shape, stat, target)
    return Choice(chosen, reason, tuple(eligible), ratios, passed=passed)


def _size(c: Candidate) -> float:
    return c.size_mb if c.size_mb is not None else float("inf")


def _where(shape: str) -> str:
    return "on the eval workload" if shape == WORKLOAD else f"at {shape}"


def _reason(by_name, ratios, timings, chosen, fastest, eligible, shape, stat, target) -> str:
    c = by_name[chosen]
    rest = [n for n in by_name if n != chosen]
    if not rest:
        return f"chose {chosen}: the only candidate"
    pool = [n for n in eligible if n != chosen]
    if pool:  # the runner-up: the fastest when the smaller one won, else the next fastest eligible one
        second = fastest if fastest != chosen else min(pool, key=lambda n: (ratios[n].value, n))
        vs = ratio_interval(timings[second], timings[chosen], stat=stat)
        if vs.ci95[0] <= 1.0 <= vs.ci95[1]:
            text = (
                f"chose {chosen}: as fast as {second} {_where(shape)} within noise ({second} ÷ {chosen} "
                f"{vs.value:.2f}x [{vs.ci95[0]:.2f}, {vs.ci95[1]:.2f}]) and smaller "
                f"({_mb(c)} vs {_mb(by_name[second])})"
            )
        else:
            text = f"chose {chosen}: {vs.value:.2f}x faster than {second} {_where(shape)}"
    else:
        text = f"chose {chosen}: no other candidate passed"
    failed = [n for n in rest if not by_name[n].accuracy_passed]
    if failed:
        text += f"; {', '.join(failed)} failed the accuracy check"
    for n in rest:
        if by_name[n].accuracy_passed and n not in eligible:
            r = ratios[n]
            text += f"; {n} too slow {_where(shape)} ({r.value:.2f}x the reference [{r.ci95[0]:.2f}, {r.ci95[1]:.2f}])"
    int8 = [n for n in rest if by_name[n].precision == "int8" and by_name[n].accuracy_passed]
    if c.precision != "int8" and int8:
        text += f"; int8 does not pay on {target or 'this CPU'}"
    return text


def _mb(c: Candidate) -> str:
    return "? MB" if c.size_mb is None else f"{c.size_mb:.1f} MB"


def candidate_rows(
    candidates: Sequence[Candidate], models: Mapping[str, Mapping[str, Any]], choice: Choice, *, target: str
) -> list[dict[str, Any]]:
    """The report's table: every candidate with its drop, interval, latency per shape, size, target."""
    rows = []
    for c in candidates:
        m = models[c.name]
        rows.append(
            {
                "name": c.name,
                "runtime": c.runtime,
                "precision": c.precision,
                "file": c.file,
                "drop": c.drop,
                "drop_ci95": list(c.drop_ci95) if c.drop_ci95 else None,
                "accuracy_passed": c.accuracy_passed,
                "ratio": choice.ratios[c.name].to_dict(),
                "latency": [
                    {k: r[k] for k in ("batch_size", "seq_len", "p50_ms", "p95_ms")} for r in m.get("latency") or ()
                ],
                "workload_s": (m.get("real_workload") or {}).get("seconds"),
                "size_mb": c.size_mb,
                "target": target,
                "chosen": c.name == choice.chosen,
            }
        )
    return rows


@dataclass(frozen=True)
class Setup:
    """What selection needs besides the measurements (built by the pipeline)."""

    offers: tuple[Offer, ...]  # every candidate, the reference among them
    reference: str  # ORT fp32's report name
    shape: str  # select.shape ("" = the workload when timed, else the last shape)
    target: str  # the target's name, for the reason
    notes: tuple[str, ...] = ()  # what was not offered and why (ORT has no fast bf16 CPU path)


def timings_at(models: Mapping[str, Mapping[str, Any]], names: Sequence[str], shape: str):
    """(shape, per-round times of each of ``names``, the statistic) at ``shape``: ``"workload"`` (the
    eval set's batches), ``"b32xs128"``, or ``""`` (the workload when it was timed, else the last shape)."""
    first = models[names[0]]
    if not shape:
        shape = WORKLOAD if (first.get("real_workload") or {}).get("batches_ms") else _key(first["latency"][-1])
    if shape == WORKLOAD:
        if not (first.get("real_workload") or {}).get("batches_ms"):
            raise BadInputError('select.shape: "workload" needs validate.real_workload = true')
        return shape, {n: models[n]["real_workload"]["batches_ms"] for n in names}, "sum"
    timed = [_key(r) for r in first["latency"]]
    if shape not in timed:
        raise BadInputError(f"select.shape: {shape!r} was not timed; timed: {', '.join(timed)}, workload")
    return shape, {n: next(r for r in models[n]["latency"] if _key(r) == shape)["rounds_ms"] for n in names}, "median"


def _key(row: Mapping[str, Any]) -> str:
    return f"b{row['batch_size']}xs{row['seq_len']}"
