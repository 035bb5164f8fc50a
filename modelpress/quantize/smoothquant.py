"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights before quantizing.

For an activation X feeding weights W (rows = input channels), per channel j:
``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)``; X is divided by s (an explicit ``Mul`` by 1/s,
which ONNX Runtime runs at no measurable cost, unlike a per-channel QuantizeLinear) and W's rows
are multiplied by s, so X·W is unchanged in exact arithmetic but X has a flatter range.
Consumers that share one activation (Q, K, V projections) share one smoothing factor.

Where it is exact the division is folded into the producer instead of a ``Mul``
(:mod:`modelpress.quantize.smooth_fold`): a LayerNorm read only by the smoothed projections (pre-LN
decoders) takes it in its gamma and beta; the attention context (softmax · V) takes it in the V
projection's weight columns and bias, since softmax mixes tokens, never channels. A post-LN
encoder's LayerNorm (BERT) also feeds the residual, and a GELU output is not linear in its input:
those keep their ``Mul``.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx

from modelpress.quantize.graph import GraphEditor
from modelpress.quantize.offload import DiskWeights
from modelpress.quantize.smooth_fold import fold_division
from modelpress.quantize.targets import QuantTarget

_S_MIN, _S_MAX = 1e-4, 1e4


def smoothing_factors(act_absmax: np.ndarray, weights: list[tuple[np.ndarray, int]], alpha: float) -> np.ndarray:
    """Per-input-channel factors s for one activation and the weights (array, input axis) it feeds."""
    w_absmax = np.max([np.abs(w).max(axis=1 - axis) if w.ndim == 2 else np.abs(w) for w, axis in weights], axis=0)
    a = np.maximum(act_absmax.astype(np.float64), 1e-5)
    w = np.maximum(w_absmax.astype(np.float64), 1e-5)
    s = a**alpha / w ** (1.0 - alpha)
    return np.clip(s, _S_MIN, _S_MAX).astype(np.float32)


def apply_smoothing(
    model: onnx.ModelProto,
    targets: list[QuantTarget],
    act_absmax: dict[str, np.ndarray],
    alpha: float,
    *,
    factors_by_act: dict[str, np.ndarray] | None = None,
    weights: DiskWeights | None = None,
) -> tuple[onnx.ModelProto, list[QuantTarget], dict[str, np.ndarray]]:
    """A smoothed copy of the model, the targets re-pointed at the smoothed activations, and the
    factors used (keyed by the new activation name). ``factors_by_act`` (keyed by the activation)
    applies factors already chosen, on another form of the same graph (the fused one). ``weights``:
    an offloaded model's (the rescaled weights are written there too)."""
    g = GraphEditor(model, weights)
    weight_users: dict[str, int] = defaultdict(int)
    for node in g.graph.node:
        for name in node.input:
            if name in g.inits:
                weight_users[name] += 1
    by_act: dict[str, list[QuantTarget]] = defaultdict(list)
    for t in targets:
        by_act[t.activation].append(t)
    first_consumer: dict[str, int] = {}
    for idx, node in enumerate(g.graph.node):
        for name in node.input:
            first_consumer.setdefault(name, idx)
    new_targets, factors = [], {}
    # every factor from the weights as exported, before a fold rescales a weight another group reads (V's
    # columns): the factors are those of the unfolded graph
    chosen: dict[str, np.ndarray] = {}
    for act, group in by_act.items():
        if factors_by_act is not None:
            if act in factors_by_act:
                chosen[act] = factors_by_act[act]
        elif act in act_absmax:
            chosen[act] = smoothing_factors(act_absmax[act], [(g.array(t.weight), t.input_axis) for t in group], alpha)
    # the weights' rows first: a fold below may rescale a projection's columns (V), and reads its weight here
    for act, group in by_act.items():
        if act not in chosen:
            new_targets.extend(group)
            continue
        smoothed = f"{act}_smoothed"
        for t in group:
            shape = [1, 1]
            shape[t.input_axis] = -1
            scaled = (g.array(t.weight) * chosen[act].reshape(shape)).astype(np.float32)
            weight_name = t.weight
            if weight_users[t.weight] > 1:  # shared weight: give this node its own copy
                weight_name = g.add_initializer(scaled, f"{t.weight}_smoothed_{t.node_name}")
            else:
                g.replace_initializer(t.weight, scaled)
            node = g.nodes[t.node_name]
            node.input[0] = smoothed
            node.input[1] = weight_name
            new_targets.append(QuantTarget(t.node_name, t.op_type, smoothed, weight_name, t.weight_axis, t.input_axis))
    for act, s in chosen.items():
        smoothed = f"{act}_smoothed"
        factors[smoothed] = s
        if not fold_division(g, act, smoothed, s):
            inv_name = g.add_initializer((1.0 / s).astype(np.float32), f"{act}_smooth_inv_scale")
            g.insert_before_index(
                first_consumer[act],
                onnx.helper.make_node("Mul", [act, inv_name], [smoothed], name=f"{act}_smooth_mul"),
            )
    return g.finish(), new_targets, factors
