"""How sure the gate is: the paired bootstrap interval of a metric's drop, and McNemar's test.

The eval examples are resampled with replacement, the *same* indices for the teacher and the
candidate (pairs for Spearman, texts for cosine and classification, sentences for taggers, whose
word-level metrics are ratios of per-sentence sums), and the drop is recomputed on each resample;
the 2.5th and 97.5th percentiles of those drops are its 95 % interval (``scipy.stats.bootstrap``,
``paired=True``, ``vectorized=True``, percentile method, seeded: the same report twice gives the
same interval). For accuracy on independent examples, the exact McNemar test on the examples the
two models disagree about gives the p-value of "the candidate is no worse than the teacher".

Each task says which per-example arrays a metric's drop is a statistic of (``Task.paired_units``);
this module only resamples.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

RESAMPLES = 2000
SEED = 0
CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedUnits:
    """What one metric's drop is computed from: per-unit arrays (first axis = units) and a
    vectorized statistic ``f(*arrays, axis=-1) -> drop in points``."""

    arrays: tuple[np.ndarray, ...]
    statistic: Callable[..., np.ndarray]
    unit: str  # "pairs", "texts", "sentences"
    discordant: tuple[int, int] | None = None  # (teacher right & candidate wrong, the reverse), for McNemar


@dataclass(frozen=True)
class DropInterval:
    n: int
    unit: str
    drop: float  # the statistic on the whole eval set (points)
    lo: float  # 95 % interval of the drop (points)
    hi: float
    method: str
    mcnemar_p: float | None = None  # exact two-sided McNemar p on the discordant examples

    def to_dict(self) -> dict:
        out = asdict(self)
        out["drop_ci95"] = [out.pop("lo"), out.pop("hi")]
        return out

    @property
    def width(self) -> float:
        return self.hi - self.lo


def interval(units: PairedUnits, *, resamples: int = RESAMPLES, seed: int = SEED) -> DropInterval:
    from scipy.stats import binomtest, bootstrap

    n = len(units.arrays[0])
    drop = float(units.statistic(*units.arrays, axis=-1))
    if n < 2:
        lo = hi = drop
    else:
        res = bootstrap(
            units.arrays,
            units.statistic,
            paired=True,
            vectorized=True,
            n_resamples=resamples,
            confidence_level=CONFIDENCE,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (math.isfinite(lo) and math.isfinite(hi)):  # a degenerate resample distribution (all equal)
            lo = hi = drop
    p = None
    if units.discordant is not None:
        b, c = units.discordant
        p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return DropInterval(
        n,
        units.unit,
        round(drop, 4),
        round(lo, 4),
        round(hi, 4),
        f"{int(CONFIDENCE * 100)}% paired bootstrap ({resamples} resamples of the {units.unit}, "
        f"percentile, seed {seed})",
        None if p is None else round(p, 6),
    )


# -- vectorized statistics the tasks build their units from --------------------------------------------
def mean_drop(scale: float = 100.0, *, reference: float = 1.0):
    """drop = scale · (reference − mean(x)): agreement and cosine, whose teacher value is 1."""

    def stat(x, axis=-1):
        return scale * (reference - np.mean(x, axis=axis))

    return stat


def mean_rise(scale: float = 100.0):
    """drop = scale · mean(x): KL, whose teacher value is 0 and which is worse when it rises."""

    def stat(x, axis=-1):
        return scale * np.mean(x, axis=axis)

    return stat


def paired_mean_drop(scale: float = 100.0):
    """drop = scale · (mean(teacher) − mean(candidate)): accuracy against gold labels."""

    def stat(t, c, axis=-1):
        return scale * (np.mean(t, axis=axis) - np.mean(c, axis=axis))

    return stat


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, axis=-1)


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    return (a * b).sum(axis=-1) / np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))


def spearman_drop(scale: float = 100.0):
    """drop = scale · (ρ(teacher sims, gold) − ρ(candidate sims, gold)) on the same pairs."""

    def stat(t, c, gold, axis=-1):
        g = _ranks(gold)
        return scale * (_pearson(_ranks(t), g) - _pearson(_ranks(c), g))

    return stat


def ratio_drop(scale: float = 100.0):
    """drop = scale · (Σ teacher / Σ n − Σ candidate / Σ n): word accuracy over sentences."""

    def stat(t, c, n, axis=-1):
        total = np.sum(n, axis=axis)
        return scale * (np.sum(t, axis=axis) - np.sum(c, axis=axis)) / total

    return stat


def ratio_complement(scale: float = 100.0):
    """drop = scale · (1 − Σ x / Σ n): word agreement over sentences."""

    def stat(x, n, axis=-1):
        return scale * (1.0 - np.sum(x, axis=axis) / np.sum(n, axis=axis))

    return stat


def ratio_rise(scale: float = 100.0):
    """drop = scale · Σ x / Σ n: mean KL per word over sentences."""

    def stat(x, n, axis=-1):
        return scale * np.sum(x, axis=axis) / np.sum(n, axis=axis)

    return stat


def f1_drop(scale: float = 100.0):
    """drop = scale · (F1(teacher) − F1(candidate)), F1 = 2·TP / (predicted + gold) from sentence sums."""

    def stat(t_tp, t_pred, c_tp, c_pred, gold, axis=-1):
        g = np.sum(gold, axis=axis)

        def f1(tp, pred):
            den = np.sum(pred, axis=axis) + g
            return np.where(den > 0, 2 * np.sum(tp, axis=axis) / np.where(den > 0, den, 1), 0.0)

        return scale * (f1(t_tp, t_pred) - f1(c_tp, c_pred))

    return stat


def as_arrays(*columns: Sequence[float]) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(c, dtype=np.float64) for c in columns)
