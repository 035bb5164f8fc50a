"""Write QuantizeLinear/DequantizeLinear pairs around the target nodes' inputs.

Activations get one Q→DQ pair per tensor (shared by all consumers) from the calibrated range;
weights are stored as int8 with per-output-channel symmetric scales and a DequantizeLinear.
Outputs stay fp32, so ONNX Runtime fuses ``DQ(x)·DQ(W)`` into ``MatMulIntegerToFloat`` on CPU
(QLinearMatMul would also quantize the output and lose accuracy), and TensorRT reads the Q/DQ
pairs as explicit quantization.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from modelpress.runtimes.quantize.stats import TensorRange
from modelpress.runtimes.quantize.targets import QuantTarget


@dataclass(frozen=True)
class ActivationQuant:
    scale: float
    zero_point: int
    signed: bool


def activation_params(rng: TensorRange, *, symmetric: bool) -> ActivationQuant:
    lo, hi = min(rng.lo, 0.0), max(rng.hi, 0.0)  # zero must be exactly representable
    if symmetric:
        a = max(abs(lo), abs(hi), 1e-8)
        return ActivationQuant(a / 127.0, 0, True)
    span = max(hi - lo, 1e-8)
    scale = span / 255.0
    zp = int(np.clip(round(-lo / scale), 0, 255))
    return ActivationQuant(scale, zp, False)


def quantize_weight(w: np.ndarray, *, axis: int, per_channel: bool, qmax: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weight and its scale(s), in ±``qmax``: 127 (TensorRT requires the symmetric
    range), or 63 for CPUs whose int8 GEMM saturates (``runtimes.cpu``)."""
    if per_channel:
        amax = np.abs(w).max(axis=1 - axis)
    else:
        amax = np.array(np.abs(w).max())
    scale = (np.maximum(amax, 1e-12) / float(qmax)).astype(np.float32)
    shape = [1, 1]
    shape[axis] = -1
    q = np.clip(np.round(w / (scale.reshape(shape) if per_channel else scale)), -qmax, qmax).astype(np.int8)
    return q, scale


def insert_qdq(model: onnx.ModelProto, targets: list[QuantTarget], ranges: dict[str, TensorRange], *,
               symmetric_activations: bool, per_channel: bool = True, weight_qmax: int = 127) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes_by_name = {n.name: n for n in graph.node}
    position = {n.name: i for i, n in enumerate(graph.node)}
    insert_before: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    act_done: dict[str, str] = {}
    dropped_weights = set()

    for t in sorted(targets, key=lambda t: position[t.node_name]):
        node = nodes_by_name[t.node_name]
        at = position[t.node_name]
        if t.activation not in act_done:
            p = activation_params(ranges[t.activation], symmetric=symmetric_activations)
            base = t.activation
            zp_type = TensorProto.INT8 if p.signed else TensorProto.UINT8
            graph.initializer.extend([
                numpy_helper.from_array(np.array(p.scale, dtype=np.float32), f"{base}_scale"),
                onnx.helper.make_tensor(f"{base}_zero_point", zp_type, [], [p.zero_point]),
            ])
            insert_before[at].extend([
                onnx.helper.make_node("QuantizeLinear", [base, f"{base}_scale", f"{base}_zero_point"],
                                      [f"{base}_quantized"], name=f"{base}_QuantizeLinear"),
                onnx.helper.make_node("DequantizeLinear", [f"{base}_quantized", f"{base}_scale",
                                                          f"{base}_zero_point"],
                                      [f"{base}_dequantized"], name=f"{base}_DequantizeLinear"),
            ])
            act_done[t.activation] = f"{base}_dequantized"
        node.input[0] = act_done[t.activation]

        w = numpy_helper.to_array(inits[t.weight])
        q, scale = quantize_weight(w, axis=t.weight_axis, per_channel=per_channel, qmax=weight_qmax)
        wq = f"{t.weight}_{t.node_name}_quantized"
        graph.initializer.extend([
            numpy_helper.from_array(q, wq),
            numpy_helper.from_array(scale, f"{wq}_scale"),
            numpy_helper.from_array(np.zeros(scale.shape, dtype=np.int8), f"{wq}_zero_point"),
        ])
        dq_attrs = {"axis": t.weight_axis} if per_channel else {}
        insert_before[at].append(onnx.helper.make_node(
            "DequantizeLinear", [wq, f"{wq}_scale", f"{wq}_zero_point"], [f"{wq}_dequantized"],
            name=f"{wq}_DequantizeLinear", **dq_attrs))
        node.input[1] = f"{wq}_dequantized"
        dropped_weights.add(t.weight)

    still_used = {name for n in graph.node for name in n.input}
    kept = [i for i in graph.initializer if i.name not in dropped_weights or i.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    ordered = []
    for idx, node in enumerate(graph.node):
        ordered.extend(insert_before.get(idx, ()))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    return model
