"""Bounded memory for wide weights: the quantizers that work column by column (GPTQ, the int4 error
measures, the per-node int8 analysis) take a weight's output columns a chunk at a time — every
column is quantized on its own, and a 151,936-word LM head's float64 working copy, or one product
of it with a calibration sample, would otherwise be GBs.
"""

from __future__ import annotations

import numpy as np

#: output columns handled at once
COLUMNS = 8192


def column_chunks(n: int) -> list[slice]:
    """``n`` output columns in slices of at most :data:`COLUMNS`."""
    return [slice(start, min(start + COLUMNS, n)) for start in range(0, n, COLUMNS)]


def sum_sq(a: np.ndarray) -> float:
    """Σ a², accumulated in float64 (chunks' partial sums add up to the whole's)."""
    return float(np.sum(np.square(a, dtype=np.float64)))
