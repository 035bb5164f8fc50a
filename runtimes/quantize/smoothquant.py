"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights before quantizing.

For an activation X feeding weights W (rows = input channels), per channel j:
``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)``; X is divided by s (an explicit ``Mul`` by 1/s,
which ONNX Runtime runs at no measurable cost, unlike a per-channel QuantizeLinear) and W's rows
are multiplied by s, so X·W is unchanged in exact arithmetic but X has a flatter range.
Consumers that share one activation (Q, K, V projections) share one smoothing factor.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

from modelpress.runtimes.quantize.targets import QuantTarget

_S_MIN, _S_MAX = 1e-4, 1e4


def smoothing_factors(act_absmax: np.ndarray, weights: list[tuple[np.ndarray, int]],
                      alpha: float) -> np.ndarray:
    """Per-input-channel factors s for one activation and the weights (array, input axis) it feeds."""
    w_absmax = np.max([np.abs(w).max(axis=1 - axis) if w.ndim == 2 else np.abs(w) for w, axis in weights], axis=0)
    a = np.maximum(act_absmax.astype(np.float64), 1e-5)
    w = np.maximum(w_absmax.astype(np.float64), 1e-5)
    s = a ** alpha / w ** (1.0 - alpha)
    return np.clip(s, _S_MIN, _S_MAX).astype(np.float32)


def apply_smoothing(model: onnx.ModelProto, targets: list[QuantTarget],
                    act_absmax: dict[str, np.ndarray], alpha: float
                    ) -> tuple[onnx.ModelProto, list[QuantTarget], dict[str, np.ndarray]]:
    """A smoothed copy of the model, the targets re-pointed at the smoothed activations, and the
    factors used (keyed by the new activation name)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: i for i in model.graph.initializer}
    weight_users = defaultdict(int)
    for node in model.graph.node:
        for name in node.input:
            if name in inits:
                weight_users[name] += 1
    by_act: dict[str, list[QuantTarget]] = defaultdict(list)
    for t in targets:
        by_act[t.activation].append(t)

    nodes_by_name = {n.name: n for n in model.graph.node}
    first_consumer = {}
    for idx, node in enumerate(model.graph.node):
        for name in node.input:
            first_consumer.setdefault(name, idx)
    insert_before: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    new_targets, factors = [], {}
    for act, group in by_act.items():
        if act not in act_absmax:
            new_targets.extend(group)
            continue
        weights = [(numpy_helper.to_array(inits[t.weight]), t.input_axis) for t in group]
        s = smoothing_factors(act_absmax[act], weights, alpha)
        smoothed = f"{act}_smoothed"
        inv_name = f"{act}_smooth_inv_scale"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv_name))
        insert_before[first_consumer[act]].append(
            onnx.helper.make_node("Mul", [act, inv_name], [smoothed], name=f"{act}_smooth_mul"))
        factors[smoothed] = s
        for t, (w, axis) in zip(group, weights):
            shape = [1, 1]
            shape[axis] = -1
            scaled = (w * s.reshape(shape)).astype(np.float32)
            weight_name = t.weight
            if weight_users[t.weight] > 1:  # shared weight: give this node its own copy
                weight_name = f"{t.weight}_smoothed_{t.node_name}"
                model.graph.initializer.append(numpy_helper.from_array(scaled, weight_name))
            else:
                inits[t.weight].CopyFrom(numpy_helper.from_array(scaled, t.weight))
            node = nodes_by_name[t.node_name]
            node.input[0] = smoothed
            node.input[1] = weight_name
            new_targets.append(QuantTarget(t.node_name, t.op_type, smoothed, weight_name, t.weight_axis, t.input_axis))
    _insert_nodes(model, insert_before)
    return model, new_targets, factors


def _insert_nodes(model: onnx.ModelProto, insert_before: dict[int, list[onnx.NodeProto]]) -> None:
    ordered = []
    for idx, node in enumerate(model.graph.node):
        ordered.extend(insert_before.get(idx, ()))
        ordered.append(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
