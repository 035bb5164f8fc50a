"""The learning-rate schedule: linear warm-up, then linear decay towards zero (BERT / DistilBERT).

A pure function of the optimizer step, so a resumed run needs no scheduler state.
"""

from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def lr_factor(step: int, *, warmup: int, total: int) -> float:
    """Multiplier of the peak learning rate for 0-based optimizer ``step`` of ``total``.

    Rises as ``(step + 1) / warmup`` over the first ``warmup`` steps, is 1 at ``step == warmup``,
    then falls linearly to ``1 / (total - warmup)`` at the last step (never exactly zero).
    """
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))
