"""Streaming activation statistics with bounded memory, and the ranges each calibration method picks.

ONNX Runtime's own calibrators keep every batch's outputs (19.6 GB RSS for percentile on MiniLM)
and crash on narrow ranges ("Too many bins for data range"). Here each tensor keeps per-channel
min/max and one fixed-size histogram over a symmetric range that grows by re-binning, so memory
is O(channels + bins) per tensor whatever the number of samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_TINY = 1e-8


@dataclass(frozen=True)
class TensorRange:
    lo: float
    hi: float
    #: share of the observed [min, max] span cut off by the method (0 for minmax)
    clipped: float

    def symmetric(self) -> "TensorRange":
        """±max(|lo|, |hi|): the range as a zero-point-0 (TensorRT-style) quantizer covers it."""
        a = max(abs(self.lo), abs(self.hi))
        return TensorRange(-a, a, self.clipped)


class TensorStats:
    """Running statistics of one activation tensor, over the rows (tokens) it was shown."""

    def __init__(self, *, num_bins: int = 2048, histogram: bool = False):
        self.num_bins = num_bins + (num_bins % 2)  # even: the histogram folds around 0
        self.histogram = histogram
        self.count = 0
        self.ch_min: np.ndarray | None = None
        self.ch_max: np.ndarray | None = None
        self.hist: np.ndarray | None = None
        self.hist_amax = 0.0

    # -- updating -------------------------------------------------------------------------
    def update(self, rows: np.ndarray) -> None:
        """Add a [N, C] block of values (C = channels, the tensor's last axis)."""
        if rows.size == 0:
            return
        rows = np.asarray(rows, dtype=np.float32)
        cmin, cmax = rows.min(axis=0), rows.max(axis=0)
        if self.ch_min is None:
            self.ch_min, self.ch_max = cmin, cmax
        else:
            np.minimum(self.ch_min, cmin, out=self.ch_min)
            np.maximum(self.ch_max, cmax, out=self.ch_max)  # type: ignore[arg-type]  # set together with ch_min
        self.count += rows.shape[0]
        if self.histogram:
            self._update_histogram(rows, float(max(-cmin.min(), cmax.max())))

    def _update_histogram(self, rows: np.ndarray, amax: float) -> None:
        amax = max(amax, _TINY)
        if self.hist is None:
            self.hist_amax = amax
            self.hist = np.zeros(self.num_bins, dtype=np.float64)
        elif amax > self.hist_amax:
            # re-bin the old counts (at their bin centres) onto the wider range
            old_edges = np.linspace(-self.hist_amax, self.hist_amax, self.num_bins + 1)
            centres = (old_edges[:-1] + old_edges[1:]) / 2
            self.hist, _ = np.histogram(centres, bins=self.num_bins, range=(-amax, amax), weights=self.hist)
            self.hist_amax = amax
        counts, _ = np.histogram(rows, bins=self.num_bins, range=(-self.hist_amax, self.hist_amax))
        self.hist += counts

    # -- summaries ------------------------------------------------------------------------
    @property
    def min(self) -> float:
        return float(self.ch_min.min())  # type: ignore[union-attr]  # set by the first update()

    @property
    def max(self) -> float:
        return float(self.ch_max.max())  # type: ignore[union-attr]

    def channel_absmax(self) -> np.ndarray:
        return np.maximum(np.abs(self.ch_min), np.abs(self.ch_max))  # type: ignore[arg-type]

    def range(self, method: str, *, percentile: float = 99.999, symmetric: bool = False) -> TensorRange:
        if self.ch_min is None:
            raise ValueError("no data was collected for this tensor")
        lo, hi = self.min, self.max
        if method == "minmax":
            new_lo, new_hi = lo, hi
        elif method == "percentile":
            new_lo, new_hi = self._percentile_range(percentile, symmetric=symmetric)
        elif method == "entropy":
            t = self._entropy_threshold(levels=128)
            new_lo, new_hi = max(lo, -t), min(hi, t)
        else:
            raise ValueError(f"unknown calibration method {method!r}")
        if symmetric:
            a = max(abs(new_lo), abs(new_hi))
            new_lo, new_hi = -a, a
        span = max(hi - lo, _TINY)
        kept = max(0.0, min(hi, new_hi) - max(lo, new_lo))
        clipped = min(1.0, max(0.0, 1.0 - kept / span))
        return TensorRange(float(new_lo), float(new_hi), float(clipped))

    def _require_hist(self) -> np.ndarray:
        if self.hist is None:
            raise ValueError("histogram calibration needs statistics collected with histogram=True")
        return self.hist

    def _edges(self) -> np.ndarray:
        return np.linspace(-self.hist_amax, self.hist_amax, self.num_bins + 1)

    def _percentile_range(self, percentile: float, *, symmetric: bool) -> tuple[float, float]:
        hist = self._require_hist()
        total = hist.sum()
        tail = total * (100.0 - percentile) / 100.0
        if symmetric:
            half = self.num_bins // 2
            folded = hist[half:] + hist[:half][::-1]
            cdf = np.cumsum(folded)
            idx = int(np.searchsorted(cdf, total - tail))
            a = (min(idx, half - 1) + 1) * self.hist_amax / half
            return -a, a
        cdf = np.cumsum(hist)
        edges = self._edges()
        lo_idx = int(np.searchsorted(cdf, tail / 2, side="right"))
        hi_idx = int(np.searchsorted(cdf, total - tail / 2))
        return (min(float(edges[lo_idx]), 0.0) if lo_idx else self.min, float(edges[min(hi_idx + 1, self.num_bins)]))

    def _entropy_threshold(self, *, levels: int) -> float:
        """TensorRT's KL-divergence threshold search on the |x| histogram."""
        hist = self._require_hist()
        half = self.num_bins // 2
        folded = hist[half:] + hist[:half][::-1]
        nz = np.nonzero(folded)[0]
        if len(nz) == 0:
            return self.hist_amax
        last = int(nz[-1]) + 1
        if last <= levels:
            return last * self.hist_amax / half
        best_i, best_kl = last, np.inf
        step = max(1, (last - levels) // 256)
        for i in sorted({*range(levels, last + 1, step), last}):  # always try the full range
            p = folded[:i].copy()
            p[-1] += folded[i:].sum()
            q = _expand(_merge(folded[:i], levels), folded[:i] > 0, levels)
            kl = _kl(p, q)
            if kl < best_kl:
                best_kl, best_i = kl, i
        return best_i * self.hist_amax / half


def _merge(p: np.ndarray, levels: int) -> np.ndarray:
    bounds = np.linspace(0, len(p), levels + 1).astype(int)
    return np.add.reduceat(p, bounds[:-1])


def _expand(q_levels: np.ndarray, nonzero: np.ndarray, levels: int) -> np.ndarray:
    bounds = np.linspace(0, len(nonzero), levels + 1).astype(int)
    q = np.zeros(len(nonzero), dtype=np.float64)
    for j in range(levels):
        a, b = bounds[j], bounds[j + 1]
        n = nonzero[a:b].sum()
        if n:
            q[a:b] = np.where(nonzero[a:b], q_levels[j] / n, 0.0)
    return q


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / max(p.sum(), _TINY)
    q = q / max(q.sum(), _TINY)
    mask = p > 0
    q = np.where(q[mask] > 0, q[mask], _TINY)
    return float(np.sum(p[mask] * np.log(p[mask] / q)))
