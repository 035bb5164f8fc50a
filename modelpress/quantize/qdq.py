"""Write QuantizeLinear/DequantizeLinear pairs around the target nodes' inputs.

Activations get one Q→DQ pair per tensor (shared by all consumers) from the calibrated range;
weights are stored as int8 with per-output-channel symmetric scales and a DequantizeLinear.
Outputs stay fp32, so ONNX Runtime fuses ``DQ(x)·DQ(W)`` into ``MatMulIntegerToFloat`` on CPU
(QLinearMatMul would also quantize the output and lose accuracy), and TensorRT reads the Q/DQ
pairs as explicit quantization.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from modelpress.quantize.graph import GraphEditor
from modelpress.quantize.offload import DiskWeights

from modelpress.quantize.stats import TensorRange
from modelpress.quantize.targets import EltwiseInput, QuantTarget, ScoreMatMul


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
    if per_channel:  # one scale per output channel: the max over every other axis (Conv: [O, I/g, kH, kW])
        amax = np.abs(w).max(axis=tuple(i for i in range(w.ndim) if i != axis))
    else:
        amax = np.array(np.abs(w).max())
    scale = (np.maximum(amax, 1e-12) / float(qmax)).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / (scale.reshape(shape) if per_channel else scale)), -qmax, qmax).astype(np.int8)
    return q, scale


def _activation_qdq(g: GraphEditor, tensor: str, base: str, p: ActivationQuant, *, before: str) -> str:
    """A QuantizeLinear → DequantizeLinear pair on ``tensor`` (per-tensor ``p``; int8 zero point when
    signed, else uint8), its initializers named after ``base``, inserted before node ``before``;
    returns the dequantized tensor's name."""
    zp_type = TensorProto.INT8 if p.signed else TensorProto.UINT8
    g.add_initializer(np.array(p.scale, dtype=np.float32), f"{base}_scale")
    g.add_initializer(onnx.helper.make_tensor(f"{base}_zero_point", zp_type, [], [p.zero_point]))
    g.insert_before(
        before,
        onnx.helper.make_node(
            "QuantizeLinear",
            [tensor, f"{base}_scale", f"{base}_zero_point"],
            [f"{base}_quantized"],
            name=f"{base}_QuantizeLinear",
        ),
        onnx.helper.make_node(
            "DequantizeLinear",
            [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
            [f"{base}_dequantized"],
            name=f"{base}_DequantizeLinear",
        ),
    )
    return f"{base}_dequantized"


def insert_qdq(
    model: onnx.ModelProto,
    targets: list[QuantTarget],
    ranges: dict[str, TensorRange],
    *,
    symmetric_activations: bool,
    per_channel: bool = True,
    weight_qmax: int = 127,
    weights: DiskWeights | None = None,
) -> onnx.ModelProto:
    g = GraphEditor(model, weights)
    act_done: dict[str, str] = {}
    for t in sorted(targets, key=lambda t: g.position[t.node_name]):
        node = g.nodes[t.node_name]
        if t.activation not in act_done:
            p = activation_params(ranges[t.activation], symmetric=symmetric_activations)
            act_done[t.activation] = _activation_qdq(g, t.activation, t.activation, p, before=t.node_name)
        node.input[0] = act_done[t.activation]

        q, scale = quantize_weight(g.array(t.weight), axis=t.weight_axis, per_channel=per_channel, qmax=weight_qmax)
        wq = f"{t.weight}_{t.node_name}_quantized"
        g.add_initializer(q, wq)
        g.add_initializer(scale, f"{wq}_scale")
        g.add_initializer(np.zeros(scale.shape, dtype=np.int8), f"{wq}_zero_point")
        dq_attrs = {"axis": t.weight_axis} if per_channel else {}
        g.insert_before(
            t.node_name,
            onnx.helper.make_node(
                "DequantizeLinear",
                [wq, f"{wq}_scale", f"{wq}_zero_point"],
                [f"{wq}_dequantized"],
                name=f"{wq}_DequantizeLinear",
                **dq_attrs,
            ),
        )
        node.input[1] = f"{wq}_dequantized"
        g.drop_if_unused(t.weight)
    return g.finish()


def insert_score_qdq(
    model: onnx.ModelProto,
    scores: list[ScoreMatMul],
    ranges: dict[str, TensorRange],
    *,
    weights: DiskWeights | None = None,
) -> onnx.ModelProto:
    """Symmetric int8 Q/DQ (zero point 0, one scale per tensor) on the Q and K projection outputs of
    each Q·Kᵀ MatMul, read only by the node on the way to that MatMul: the projection's other readers
    and the attention·V path keep fp32. Signed and symmetric is what NNCF writes there and what
    OpenVINO's int8 MHA kernel takes."""
    g = GraphEditor(model, weights)
    for tensor, reader in dict.fromkeys(
        (t, r) for s in scores for t, r in ((s.query, s.query_reader), (s.key, s.key_reader))
    ):
        p = activation_params(ranges[tensor], symmetric=True)
        dequantized = _activation_qdq(g, tensor, f"{tensor}_scores", p, before=reader)
        node = g.nodes[reader]
        node.input[:] = [dequantized if name == tensor else name for name in node.input]
    return g.finish()


def insert_eltwise_qdq(
    model: onnx.ModelProto,
    sites: list[EltwiseInput],
    ranges: dict[str, TensorRange],
    *,
    symmetric: bool,
    weights: DiskWeights | None = None,
) -> onnx.ModelProto:
    """Int8 Q/DQ on each residual Add's and pooling node's input (``targets.find_eltwise_inputs``): a
    tensor a Conv's Q/DQ pair already quantizes (the same calibrated range) is read through that
    pair, as NNCF shares one FakeQuantize; else one new pair per tensor."""
    g = GraphEditor(model, weights)
    producer = {o: n.name for n in g.graph.node for o in n.output}
    done: dict[str, str] = {}
    for site in sites:
        if site.tensor not in done:
            shared = f"{site.tensor}_dequantized"
            if shared in producer and g.position[producer[shared]] < g.position[site.reader]:
                done[site.tensor] = shared
            else:
                p = activation_params(ranges[site.tensor], symmetric=symmetric)
                done[site.tensor] = _activation_qdq(g, site.tensor, f"{site.tensor}_eltwise", p, before=site.reader)
        node = g.nodes[site.reader]
        node.input[:] = [done[site.tensor] if name == site.tensor else name for name in node.input]
    return g.finish()
