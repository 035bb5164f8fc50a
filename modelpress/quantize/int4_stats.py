"""What the data-aware int4 methods read of the calibration set: per constant-weight ``MatMul`` input
(an activation, shared by the MatMuls that read it: Q/K/V after a norm), streamed over the
calibration batches with bounded memory — never all the activations.

Per activation: the per-channel mean |x| (AWQ's salience), a uniform sample of at most
``sample_rows`` token rows (the rows on which methods measure output error: AWQ's scale and clip
search, the per-layer error and the int4/int8 sensitivity), and for GPTQ XᵀX over every real token
(its Hessian, K×K in float32: 95 MB for a 4,864-wide input). Padding rows are dropped as the
static calibration drops them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx

from modelpress.quantize.calibrate import stream_stats

#: the most bytes one activation's row sample may hold (a 4,864-wide MLP input: 862 rows)
SAMPLE_BYTES = 16 * 2**20


@dataclass
class ActivationStats:
    """Running statistics of one MatMul input over the token rows it was shown."""

    channels: int
    sample_rows: int
    hessian: bool
    seed: int = 0
    count: int = 0
    abs_sum: np.ndarray = field(init=False)
    xtx: np.ndarray | None = field(init=False, default=None)
    sample: np.ndarray = field(init=False)
    _keys: np.ndarray = field(init=False)  # reservoir keys: the rows with the smallest keep their place
    _rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.abs_sum = np.zeros(self.channels, np.float64)
        self.sample = np.zeros((0, self.channels), np.float32)
        self._keys = np.zeros(0)
        self._rng = np.random.default_rng(self.seed)
        if self.hessian:
            self.xtx = np.zeros((self.channels, self.channels), np.float32)

    def update(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.float32)
        if rows.size == 0:
            return
        self.count += rows.shape[0]
        self.abs_sum += np.abs(rows).sum(axis=0, dtype=np.float64)
        if self.xtx is not None:
            self.xtx += rows.T @ rows
        # a uniform sample of every row seen (random keys, the smallest kept), whatever the batch order
        keys = np.concatenate([self._keys, self._rng.random(rows.shape[0])])
        sample = np.concatenate([self.sample, rows])
        keep = np.argsort(keys, kind="stable")[: self.sample_rows]
        self._keys, self.sample = keys[keep], sample[keep]

    @property
    def mean_abs(self) -> np.ndarray:
        return (self.abs_sum / max(self.count, 1)).astype(np.float32)


def rows_kept(channels: int, sample_rows: int) -> int:
    """How many sample rows an activation of ``channels`` keeps (at most :data:`SAMPLE_BYTES`)."""
    return max(16, min(sample_rows, SAMPLE_BYTES // (4 * channels)))


def stats_bytes(channels: int, sample_rows: int, hessian: bool) -> int:
    """The bytes one activation's statistics hold: its row sample, and XᵀX for GPTQ."""
    return 4 * channels * rows_kept(channels, sample_rows) + (4 * channels * channels if hessian else 0)


def collect_activation_stats(
    model: onnx.ModelProto,
    activations: Mapping[str, int],
    feeds: Iterable[Mapping[str, np.ndarray]],
    *,
    sample_rows: int,
    hessian: bool,
    exclude_padding: bool = True,
    seeds: Mapping[str, int] | None = None,
    weights_dir: Path | None = None,
    desc: str = "int4 calibration",
) -> dict[str, ActivationStats]:
    """{activation: its statistics}, from one pass of the fp32 ``model`` over ``feeds``;
    ``activations`` maps each tensor name to its channel count; ``seeds`` each one's sampling seed
    (default: its position), so a pass over part of the activations samples as the whole pass would."""
    stats = {
        n: ActivationStats(c, rows_kept(c, sample_rows), hessian, seed=seeds[n] if seeds is not None else i)
        for i, (n, c) in enumerate(activations.items())
    }
    return stream_stats(model, stats, feeds, exclude_padding=exclude_padding, desc=desc, weights_dir=weights_dir)
