"""Per-node quantization error: how much error each int8 node adds, and whether it comes from
its weight or its activation.

For each target node, the fp32 (smoothed) model is run on calibration batches with the node's
input exposed; on the real-token rows, numpy then computes, with the plan's exact scales,
  y = x·W,  y_w = x·dq(q(W)),  y_a = dq(q(x))·W,  y_q = dq(q(x))·dq(q(W))
which is what ONNX Runtime's MatMulIntegerToFloat computes for the node in isolation (errors of
earlier nodes are not compounded). SQNR = 10·log10(‖y‖² / ‖y − ŷ‖²) in dB; relative L2 = ‖y − ŷ‖/‖y‖.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from modelpress.export.names import module_names
from modelpress.quantize.chunks import column_chunks, sum_sq
from modelpress.quantize.calibrate import _session_with_outputs, _token_rows
from modelpress.quantize.qdq import ActivationQuant, quantize_weight
from modelpress.quantize.static import QuantPlan
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class NodeError:
    node: str  # the ONNX node
    module: str | None  # the module path it came from (encoder.layer.3.output.dense), when known
    activation: str
    sqnr_db: float  # both quantized (what the int8 model does)
    rel_l2: float
    weight_only_sqnr_db: float
    activation_only_sqnr_db: float
    weight_only_rel_l2: float
    activation_only_rel_l2: float

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        """How people are shown the node: its module path, with the ONNX name beside it."""
        return f"{self.module} ({self.node})" if self.module else self.node


def fake_quant_activation(x: np.ndarray, p: ActivationQuant) -> np.ndarray:
    lo, hi = (-128, 127) if p.signed else (0, 255)
    q = np.clip(np.round(x / p.scale) + p.zero_point, lo, hi)
    return ((q - p.zero_point) * p.scale).astype(np.float32)


def fake_quant_weight(w: np.ndarray, *, axis: int, per_channel: bool, qmax: int = 127) -> np.ndarray:
    q, scale = quantize_weight(w, axis=axis, per_channel=per_channel, qmax=qmax)
    shape = [1] * w.ndim
    shape[axis] = -1
    return (q.astype(np.float32) * (scale.reshape(shape) if per_channel else scale)).astype(np.float32)


def _convolution(node):
    """``(x, w) -> y``: the Conv node's 2-D convolution (strides, pads, dilations, groups; no bias),
    in torch (ONNX pads are [top, left, bottom, right])."""

    attrs = {a.name: list(a.ints) if a.ints else a.i for a in node.attribute}
    pads = attrs.get("pads", [0, 0, 0, 0])

    def apply(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            xt = F.pad(torch.from_numpy(x), (pads[1], pads[3], pads[0], pads[2]))
            y = F.conv2d(
                xt,
                torch.from_numpy(w),
                stride=attrs.get("strides", [1, 1]),
                dilation=attrs.get("dilations", [1, 1]),
                groups=attrs.get("group", 1),
            )
        return y.numpy()

    return apply


def _sqnr(ref_energy: float, err_energy: float) -> float:
    if err_energy <= 0:
        return 300.0  # exact: report a finite ceiling (JSON has no infinity)
    return float(10.0 * np.log10(max(ref_energy, 1e-30) / err_energy))


def analyze_plan(
    plan: QuantPlan, feeds: Iterable[Mapping[str, np.ndarray]], *, max_batches: int = 4
) -> list[NodeError]:
    """Errors of every target node of the plan, worst (lowest SQNR) first. One batch's activations
    at a time: the energies are sums over tokens, so each batch adds its part and is dropped (holding
    every batch's inputs of every node was 1.5 GB and its concatenated copy as much again at 0.5 B)."""
    feeds = list(itertools.islice(iter(feeds), max_batches))
    acts = list(dict.fromkeys(t.activation for t in plan.targets))
    session = _session_with_outputs(plan.model, acts, weights_dir=plan.weights.folder if plan.weights else None)
    input_names = [i.name for i in session.get_inputs()]
    nodes = {n.name: n for n in plan.model.graph.node}
    energy = {t.node_name: dict.fromkeys(("ref", "both", "w", "a"), 0.0) for t in plan.targets}
    for feed in feeds:
        values = dict(zip(acts, session.run(acts, {k: feed[k] for k in input_names})))
        mask = feed.get("attention_mask") if plan.cfg.exclude_padding else None
        rows = {a: _token_rows(v, mask) for a, v in values.items()}
        for t in plan.targets:
            _add_energies(energy[t.node_name], plan, t, values[t.activation], rows[t.activation], nodes)
        del values, rows
    del session
    modules = module_names(plan.model)
    results = []
    for t in plan.targets:
        e = energy[t.node_name]
        norm = np.sqrt(max(e["ref"], 1e-30))
        results.append(
            NodeError(
                t.node_name,
                modules.get(t.node_name),
                t.activation,
                _sqnr(e["ref"], e["both"]),
                float(np.sqrt(e["both"]) / norm),
                _sqnr(e["ref"], e["w"]),
                _sqnr(e["ref"], e["a"]),
                float(np.sqrt(e["w"]) / norm),
                float(np.sqrt(e["a"]) / norm),
            )
        )
    return sorted(results, key=lambda e: e.sqnr_db)


def _add_energies(energy: dict, plan: QuantPlan, t: Any, value: np.ndarray, rows: np.ndarray, nodes: dict) -> None:
    """One batch's ‖y‖² and ‖y − ŷ‖² (both quantized, weight only, activation only) of target ``t``."""
    w = plan.weight(t.weight).astype(np.float32, copy=False)
    if t.op_type == "Conv":  # the whole NCHW input through the node's own convolution
        x = value.astype(np.float32)
        apply = _convolution(nodes[t.node_name])
        axis = t.weight_axis
    else:
        x = rows.astype(np.float32)
        apply = np.matmul
        if t.op_type == "Gemm" and t.weight_axis == 0:  # transB: W is [N, K]
            w = w.T
            axis = 1
        else:
            axis = t.weight_axis
    xq = fake_quant_activation(x, plan.activation_quant(t.activation))
    # per output column, the columns are independent: a wide weight (a 151,936-word LM head: 0.6 GB, and
    # each product as much) goes a chunk of columns at a time
    by_column = t.op_type != "Conv" and plan.cfg.per_channel and axis == w.ndim - 1
    for c in column_chunks(w.shape[-1]) if by_column else [slice(None)]:
        wc = w[..., c]
        wq = fake_quant_weight(wc, axis=axis, per_channel=plan.cfg.per_channel, qmax=plan.cfg.weight_qmax)
        y = apply(x, wc)
        energy["ref"] += sum_sq(y)
        for name, yq in (("both", apply(xq, wq)), ("w", apply(x, wq)), ("a", apply(xq, wc))):
            energy[name] += sum_sq(y - yq)


def plot_errors(errors: list[NodeError], path: Path, *, top: int = 40) -> Path | None:
    """Horizontal bar chart of SQNR per node (worst at the top); None if matplotlib is missing or
    no node was analyzed (weight-only)."""
    if not errors:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    shown = errors[:top]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(shown) + 1.5))
    ys = np.arange(len(shown))[::-1]
    ax.barh(ys + 0.27, [e.weight_only_sqnr_db for e in shown], height=0.27, label="weight only", color="#9ecae1")
    ax.barh(ys, [e.activation_only_sqnr_db for e in shown], height=0.27, label="activation only", color="#fdae6b")
    ax.barh(ys - 0.27, [e.sqnr_db for e in shown], height=0.27, label="int8 node", color="#d62728")
    ax.set_yticks(ys)
    ax.set_yticklabels([e.label for e in shown], fontsize=7)
    ax.set_xlabel("SQNR (dB, higher is better)")
    ax.set_title("Per-node int8 error vs fp32 (worst first)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
