"""Activation-aware weight quantization (AWQ; Lin et al., 2024) for ``quantize.int4_method = "awq"``.

The few input channels that carry large activations matter most to a MatMul's output. For one
activation x and the weights W (rows = input channels) that read it, scale each input channel by
s = mean|x|^α before quantizing and divide x by s (folded into the norm before it, or an explicit
``Mul``): Q(diag(s)·W) / s keeps the salient rows' relative precision. α ∈ [0, 1] is searched on a
grid, choosing the one that minimises the output error ‖x·W − (x/s)·Q(diag(s)·W)‖² summed over the
weights that share x, on the calibration sample's rows; α = 0 is round-to-nearest, so the search
never does worse than RTN on those rows. Then, per block and output column, a clip ratio r
(the block's scale shrunk to r·peak) is searched the same way (AWQ's clip search) using the block's
slice of the scaled inputs' XᵀX.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modelpress.quantize.blockwise import BlockQuant, padded, quantize_rtn

ALPHAS = tuple(i / 20 for i in range(21))
CLIP_RATIOS = tuple(1.0 - i / 40 for i in range(21))  # 1.0 … 0.5
_S_MIN = 1e-4


@dataclass(frozen=True)
class AwqScales:
    alpha: float
    scales: np.ndarray  # [K]: weights' rows multiplied by these, the activation divided by them


def output_error(x: np.ndarray, w: np.ndarray, w_hat: np.ndarray) -> float:
    """‖x·w − x·ŵ‖² on the sample rows ``x``."""
    d = x @ (w - w_hat)
    return float(np.einsum("ij,ij->", d, d, dtype=np.float64))


def _scales(mean_abs: np.ndarray, alpha: float) -> np.ndarray:
    s = np.maximum(mean_abs.astype(np.float64), _S_MIN) ** alpha
    s = s / np.sqrt(s.max() * s.min())  # centred on 1: neither the weights nor the activation drift in range
    return s.astype(np.float32)


def search_scales(
    mean_abs: np.ndarray, x: np.ndarray, weights: list[np.ndarray], *, bits: int, block: int, fixed: bool = False
) -> AwqScales:
    """The α (and its scales) of least summed output error for ``weights`` that read ``x``;
    ``fixed``: the weights cannot be scaled (a head tied to the embedding table): α = 0."""
    if fixed:
        return AwqScales(0.0, np.ones(x.shape[1], np.float32))
    best: tuple[float, AwqScales] | None = None
    for alpha in ALPHAS:
        s = _scales(mean_abs, alpha)
        err = sum(
            output_error(x, w, quantize_rtn(w * s[:, None], bits, block).dequantized() / s[:, None]) for w in weights
        )
        # ties (a constant activation) keep the smaller α: RTN when nothing is gained
        if best is None or err < best[0] * (1 - 1e-9):
            best = (err, AwqScales(alpha, s))
    assert best is not None
    return best[1]


def clip_search(w_scaled: np.ndarray, x_scaled: np.ndarray, *, bits: int, block: int) -> BlockQuant:
    """``w_scaled`` quantized with, per block and column, the clip ratio of least output error of
    that block on the rows ``x_scaled`` (δᵀ·XᵦᵀXᵦ·δ, the block's slice of XᵀX)."""
    k, n = w_scaled.shape
    xp = padded(x_scaled.T, block).T if k % block else x_scaled  # zero columns for the padded rows
    nb = xp.shape[1] // block
    xb = xp.reshape(xp.shape[0], nb, block)
    gram = np.einsum("rbi,rbj->bij", xb, xb, dtype=np.float64).astype(np.float32)  # [nb, block, block]
    wp = padded(w_scaled, block).reshape(nb, block, n)
    best_err = np.full((nb, n), np.inf, np.float32)
    best_ratio = np.ones((nb, n), np.float32)
    for r in CLIP_RATIOS:
        q = quantize_rtn(w_scaled, bits, block, r)
        delta = wp - padded(q.dequantized(), block).reshape(nb, block, n)
        err = np.einsum("bin,bin->bn", delta, np.einsum("bij,bjn->bin", gram, delta))
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_ratio = np.where(better, np.float32(r), best_ratio)
    return quantize_rtn(w_scaled, bits, block, best_ratio)
