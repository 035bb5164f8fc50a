"""Parity of an ONNX graph against reference outputs: every output reported, then one typed error.

Shaped after optimum's export validation: each output gets a ``[✓]``/``[x]`` line with its max
absolute difference; if any is over tolerance a single :class:`ParityError` names all of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from modelpress.errors import ParityError
import onnxruntime as ort

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParityReport:
    label: str
    atol: float
    max_abs_diff: float
    per_output: tuple[tuple[str, float], ...]
    feed_shape: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol


def check_parity(
    onnx_path: str,
    feed: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    *,
    atol: float,
    label: str,
    raise_on_failure: bool = True,
    select: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
) -> ParityReport:
    """Run ``onnx_path`` on ``feed`` and :func:`compare_outputs` with ``reference``."""

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    names = list(reference)
    inputs = {i.name: feed[i.name] for i in session.get_inputs()}
    got = dict(zip(names, session.run(names, inputs)))
    return compare_outputs(
        got,
        reference,
        atol=atol,
        label=label,
        source=onnx_path,
        feed_shape=tuple(next(iter(feed.values())).shape),
        raise_on_failure=raise_on_failure,
        select=select,
    )


def compare_outputs(
    got: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    *,
    atol: float,
    label: str,
    source: str,
    feed_shape: tuple[int, ...],
    raise_on_failure: bool = True,
    select: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
) -> ParityReport:
    """A line per output, then one ParityError naming every output over ``atol``. ``select``: per
    output, the part that is compared (e.g. the real positions only: what a model computes at
    padding is undefined and differs between runtimes)."""
    names = list(reference)
    diffs, failed = [], []
    for name in names:
        pick = (select or {}).get(name, lambda a: a)
        same = got[name].shape == reference[name].shape
        diff = (
            float(np.max(np.abs(pick(got[name]).astype(np.float64) - pick(reference[name])))) if same else float("inf")
        )
        ok = diff <= atol
        log.info("%s parity -[%s] %s: max |diff| %.3e (atol %.0e)", label, "✓" if ok else "x", name, diff, atol)
        diffs.append((name, diff))
        if not ok:
            failed.append(f"{name} max |diff| {diff:.3e}")
    report = ParityReport(label, atol, max(d for _, d in diffs), tuple(diffs), feed_shape)
    if failed and raise_on_failure:
        raise ParityError(
            f"{label} parity failed on a {'x'.join(map(str, feed_shape))} batch: {'; '.join(failed)} "
            f"(atol {atol:.0e}) in {source}"
        )
    return report
