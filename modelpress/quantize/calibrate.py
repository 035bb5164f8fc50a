"""Run the fp32 model on calibration feeds and collect statistics of chosen tensors.

The requested tensors are added as extra graph outputs of an in-memory copy of the model (no
``augmented_model.onnx`` in the working directory). Rows that belong to padding tokens are
dropped using the feed's ``attention_mask``: padding activations are not what the deployed model
sees on real text, and they skew the ranges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Protocol, TypeVar

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from modelpress.errors import BadInputError
from modelpress.fileio import session_from_model
from modelpress.quantize.stats import TensorStats

MASK_INPUT = "attention_mask"


def _token_rows(value: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """A tensor's values as [rows, channels], keeping only the rows of real tokens when possible."""
    if value.ndim == 0:
        return value.reshape(1, 1)
    if mask is not None:
        if value.ndim >= 3 and value.shape[:2] == mask.shape:
            return value[mask.astype(bool)].reshape(-1, value.shape[-1])
        if value.ndim == 2 and value.shape[0] == mask.size:
            return value[mask.reshape(-1).astype(bool)]
    return value.reshape(-1, value.shape[-1])


def _session_with_outputs(model: onnx.ModelProto, names: list[str], *, weights_dir: Path | None = None):
    """A session on ``model`` with ``names`` as extra outputs. The outputs are added to the model
    itself for the session's making and removed after (a copy would hold the weights twice: GBs for
    a decoder); a model past protobuf's 2 GiB goes to ONNX Runtime through external data, a model
    whose weights are on disk (``weights_dir``: ``offload``) reads them from there."""

    existing = {o.name for o in model.graph.output}
    added = [onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in existing]
    opts = ort.SessionOptions()
    # basic fusions only: the requested intermediate tensors must survive as they are
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    outputs = len(model.graph.output)
    model.graph.output.extend(added)
    try:
        return session_from_model(model, opts, weights_dir=weights_dir)
    finally:
        del model.graph.output[outputs:]


def collect_tensors(
    model: onnx.ModelProto, tensor_names: Iterable[str], feeds: Iterable[Mapping[str, np.ndarray]]
) -> dict[str, list[np.ndarray]]:
    """The raw values of some tensors on a few batches (for analysis; memory grows with batches)."""
    names = list(dict.fromkeys(tensor_names))
    session = _session_with_outputs(model, names)
    input_names = [i.name for i in session.get_inputs()]
    values: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:
        for name, value in zip(names, session.run(names, {k: feed[k] for k in input_names})):
            values[name].append(value)
    return values


class RowStats(Protocol):
    """A statistic fed one tensor's token rows ([rows, channels]) batch by batch."""

    def update(self, rows: np.ndarray) -> None: ...


S = TypeVar("S", bound=RowStats)


def stream_stats(
    model: onnx.ModelProto,
    stats: dict[str, S],
    feeds: Iterable[Mapping[str, np.ndarray]],
    *,
    exclude_padding: bool = True,
    desc: str = "calibrating",
    weights_dir: Path | None = None,
) -> dict[str, S]:
    """One pass of the fp32 ``model`` over ``feeds``, each named tensor's token rows handed to its statistic
    (never all activations at once); ``stats`` is returned, updated. ``weights_dir``: where the
    model's weights are when they are on disk (``offload``)."""
    names = list(stats)
    session = _session_with_outputs(model, names, weights_dir=weights_dir)
    input_names = [i.name for i in session.get_inputs()]
    batches = 0
    for feed in tqdm(feeds, desc=desc, unit="batch", leave=False):
        outputs = session.run(names, {k: feed[k] for k in input_names})
        mask = feed.get(MASK_INPUT) if exclude_padding else None
        for name, value in zip(names, outputs):
            stats[name].update(_token_rows(value, mask))
        batches += 1
    if batches == 0:
        raise BadInputError("calibration data produced no batches")
    return stats


def collect_stats(
    model: onnx.ModelProto,
    tensor_names: Iterable[str],
    feeds: Iterable[Mapping[str, np.ndarray]],
    *,
    histogram: bool = False,
    num_bins: int = 2048,
    exclude_padding: bool = True,
    desc: str = "calibrating",
    weights_dir: Path | None = None,
) -> dict[str, TensorStats]:
    stats = {n: TensorStats(num_bins=num_bins, histogram=histogram) for n in dict.fromkeys(tensor_names)}
    return stream_stats(model, stats, feeds, exclude_padding=exclude_padding, desc=desc, weights_dir=weights_dir)
