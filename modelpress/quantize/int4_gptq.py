"""GPTQ (Frantar et al., 2023) for ``quantize.int4_method = "gptq"``: quantize a MatMul's weight one
input row at a time and push each row's rounding error onto the rows not yet quantized, through the
inverse of H = XᵀX (the calibration inputs' Gram matrix: the output error ‖X·ΔW‖² is ΔWᵀ·H·ΔW).

Written for MatMulNBits' layout (``blockwise``): W is [K, N], blocks of ``block`` input rows per
output column, symmetric (no zero points: the node's implied 2^(bits−1)), each block's scale taken
from the block's peak once the errors of the rows before it have been added (as GPTQ's grouped
variant does; rows in their natural order, so blocks stay contiguous). H is damped by
``DAMP`` × its mean diagonal; dead inputs (never non-zero) are zeroed; the updates are applied lazily
per ``LAZY_ROWS`` rows (the paper's block updates). numpy, float64 for the Cholesky factor.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import lapack

from modelpress.quantize.blockwise import BlockQuant, block_scales
from modelpress.quantize.chunks import column_chunks

DAMP = 0.01
LAZY_ROWS = 128


def inverse_cholesky(xtx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The upper Cholesky factor U of (H + damping)⁻¹ (H⁻¹ = Uᵀ·U) and the mask of dead inputs.

    One factorization and one triangular inverse (2K³/3 flops), not H⁻¹ and its Cholesky factor
    (~5K³; a 1.5 B model's 8,960-input down projections spent most of GPTQ's time there): H = R·Rᵀ with
    R upper is the Cholesky factor of H with its rows and columns reversed, reversed back, and U = R⁻¹."""
    h = xtx.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += DAMP * np.mean(np.diag(h))
    upper = np.ascontiguousarray(np.linalg.cholesky(h[::-1, ::-1])[::-1, ::-1])
    u, info = lapack.dtrtri(upper, lower=0, overwrite_c=1)
    if info != 0:  # a zero on R's diagonal: H (damped) is positive definite, so this is not reachable
        raise np.linalg.LinAlgError(f"GPTQ: the inverse of the Hessian's factor failed (LAPACK info {info})")
    return u, dead


def gptq_quantize(w: np.ndarray, xtx: np.ndarray, *, bits: int, block: int) -> BlockQuant:
    """``w`` [K, N] quantized by GPTQ against the Hessian ``xtx`` [K, K]. Output columns are
    independent (H is shared): they are done a chunk at a time to bound the float64 working copy."""
    k, n = w.shape
    u, dead = inverse_cholesky(xtx)
    kp = k + (-k % block)
    codes = np.zeros((kp, n), np.int8)
    scales = np.zeros((kp // block, n), np.float32)
    for columns in column_chunks(n):
        work = w[:, columns].astype(np.float64)  # rows are updated in place as errors arrive
        work[dead] = 0.0
        _gptq_columns(work, u, codes[:, columns], scales[:, columns], bits=bits, block=block)
    return BlockQuant(codes, scales, bits, block, k)


def _gptq_columns(
    work: np.ndarray, u: np.ndarray, codes: np.ndarray, scales: np.ndarray, *, bits: int, block: int
) -> None:
    """GPTQ on the columns of ``work`` [K, n] (consumed), writing their ``codes`` and ``scales``."""
    k, n = work.shape
    half = 1 << (bits - 1)
    lazy = max(LAZY_ROWS // block, 1) * block  # a whole number of blocks: a block's scale sees its rows updated
    for start in range(0, k, lazy):
        stop = min(start + lazy, k)
        errs = np.zeros((stop - start, n))
        for i in range(start, stop):
            if i % block == 0:
                scales[i // block] = block_scales(work[i : i + block].astype(np.float32), bits, block)[0]
            scale = scales[i // block].astype(np.float64)
            q = np.clip(np.round(work[i] / np.where(scale == 0, 1.0, scale)), -half, half - 1)
            codes[i] = q
            err = (work[i] - q * scale) / u[i, i]
            work[i + 1 : stop] -= np.outer(u[i, i + 1 : stop], err)
            errs[i - start] = err
        work[stop:] -= u[start:stop, stop:].T @ errs
