"""One calibration, two graph forms: a plan made on ``model.onnx`` carried over to ONNX Runtime's
fused graph (``model.fused.onnx``, ``export.fusion``), which the ``ort`` format writes.

The fusion keeps every tensor name the plan calibrated (LayerNorm outputs become
SkipLayerNormalization outputs of the same name, the attention context and the Gelu output keep
theirs), so the plan's ranges apply as they are, and its SmoothQuant factors too: an ``Attention``
node reads the activation its Q/K/V projections read and packs their weights column-wise, so the
factor of that activation scales the packed weight's rows exactly as it scaled each projection's.
An ``Attention`` stands for its three projections: it is int8 only when all three are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx

from modelpress.quantize.smoothquant import apply_smoothing
from modelpress.quantize.targets import QuantTarget, find_targets

log = logging.getLogger(__name__)

SMOOTHED = "_smoothed"


@dataclass
class FusedPlan:
    """The smoothed fused graph, its targets, and which ``model.onnx`` nodes each one stands for."""

    model: onnx.ModelProto
    targets: list[QuantTarget]
    members: dict[str, tuple[str, ...]]

    def targets_without(self, keep_fp32: tuple[str, ...]) -> list[QuantTarget]:
        keep = set(keep_fp32)
        return [t for t in self.targets if not keep.intersection(self.members[t.node_name])]


def _original(activation: str, factors: dict) -> str:
    return activation[: -len(SMOOTHED)] if activation in factors and activation.endswith(SMOOTHED) else activation


def carry_over(
    fused: onnx.ModelProto, targets: list[QuantTarget], ranges: dict, factors: dict, op_types: tuple[str, ...]
) -> FusedPlan:
    """The fused graph under a plan's calibration (``targets``/``ranges`` of ``model.onnx``,
    ``factors``: its SmoothQuant factors keyed by smoothed activation)."""
    by_activation: dict[str, list[str]] = {}
    for t in targets:
        by_activation.setdefault(_original(t.activation, factors), []).append(t.node_name)
    planned = {t.node_name for t in targets}
    chosen, members, left = [], {}, []
    for t in find_targets(fused, op_types=(*op_types, "Attention")):
        if t.op_type == "Attention":
            stands_for = tuple(by_activation.get(t.activation, ()))
            ok = len(stands_for) == 3
        else:
            stands_for = (t.node_name,)
            ok = t.node_name in planned
        if ok:
            chosen.append(t)
            members[t.node_name] = stands_for
        else:
            left.append(t.node_name)
    if left:
        log.warning(
            "the fused graph keeps %d node(s) fp32 that the plan does not cover: %s", len(left), ", ".join(left[:5])
        )
    by_act = {_original(a, factors): s for a, s in factors.items()}
    model, chosen, _ = apply_smoothing(fused, chosen, {}, 0.0, factors_by_act=by_act) if by_act else (fused, chosen, {})
    missing = [t.node_name for t in chosen if t.activation not in ranges]
    if missing:  # a tensor the fusion renamed: no calibrated range, so it stays fp32
        log.warning("no calibrated range in the fused graph for %s; kept fp32", ", ".join(missing[:5]))
        chosen = [t for t in chosen if t.activation in ranges]
    return FusedPlan(model, chosen, {t.node_name: members[t.node_name] for t in chosen})
