"""Write int8 nodes as ONNX Runtime's fused CPU ops: QuantizeLinear → MatMulIntegerToFloat(+bias),
and on ORT's fused graph ``Attention`` → ``QAttention`` (uint8 input, per-column int8 Q/K/V weight).

This is the graph ONNX Runtime itself makes from our Q/DQ model at load time, with one more
fusion it does not make for static Q/DQ: the bias ``Add`` after each MatMul goes into the
``MatMulIntegerToFloat`` node (ORT only fuses the bias on its dynamic-quantization path). That
Add is ~15-20% of a quantized Linear's time at batch 32 on the 2-core CPU, the difference
between matching ORT dynamic int8 and losing to it. The model then needs ONNX Runtime
(``com.microsoft`` domain); the ``qdq`` format stays portable (TensorRT, other runtimes).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from modelpress.quantize.graph import GraphEditor
from modelpress.quantize.offload import DiskWeights
from modelpress.quantize.qdq import activation_params, quantize_weight
from modelpress.quantize.stats import TensorRange
from modelpress.quantize.targets import QuantTarget

MS_DOMAIN = "com.microsoft"


def _bias_add(g: GraphEditor, node: onnx.NodeProto):
    """The ``Add(y, bias)`` right after ``node`` that can be fused, with its bias name; else None."""
    out = node.output[0]
    users = g.consumers(out)
    if len(users) != 1 or users[0].op_type != "Add" or g.is_graph_output(out):
        return None
    add = users[0]
    other = add.input[1] if add.input[0] == out else add.input[0]
    bias = g.inits.get(other)
    if bias is None or len(bias.dims) != 1 or bias.data_type != TensorProto.FLOAT:
        return None
    return add, other


def plain_gemm(inits, node: onnx.NodeProto) -> tuple[bool, str | None] | None:
    """(transB, 1-D constant bias or None) of a ``Gemm`` that is ``A·B(ᵀ) + C`` (alpha = beta = 1,
    A not transposed): what ``MatMulIntegerToFloat`` with a bias computes; else None."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
        return None
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None:
        init = inits.get(bias)
        if init is None or len(init.dims) != 1 or init.data_type != TensorProto.FLOAT:
            return None
    return bool(attrs.get("transB", 0)), bias


def ort_gemm(inits, node: onnx.NodeProto) -> bool:
    """Whether a Gemm target (``inits``: the graph's initializers by name) can be written as
    ``MatMulIntegerToFloat``."""
    return node.op_type == "Gemm" and plain_gemm(inits, node) is not None


def _qattention(node: onnx.NodeProto, inputs: list[str]) -> onnx.NodeProto:
    """``Attention(x, w, bias, mask_index, past, ...)`` as ``QAttention(x_u8, w_s8, bias, x_scale,
    w_scale, mask_index, x_zero_point, w_zero_point, past)``; its attributes carried over."""
    x_q, w_q, x_scale, w_scale, x_zp, w_zp = inputs[:6]
    rest = list(node.input) + [""] * (5 - len(node.input))
    q = onnx.helper.make_node(
        "QAttention",
        [x_q, w_q, rest[2], x_scale, w_scale, rest[3], x_zp, w_zp, rest[4]],
        list(node.output),
        name=node.name,
        domain=MS_DOMAIN,
    )
    q.attribute.extend(
        a
        for a in node.attribute
        if a.name
        in ("num_heads", "unidirectional", "do_rotary", "past_present_share_buffer", "mask_filter_value", "scale")
    )
    while q.input and q.input[-1] == "":
        q.input.pop()
    return q


def insert_ort_int8(
    model: onnx.ModelProto,
    targets: list[QuantTarget],
    ranges: dict[str, TensorRange],
    *,
    per_channel: bool = True,
    weight_qmax: int = 127,
    weights: DiskWeights | None = None,
) -> onnx.ModelProto:
    """MatMul targets (and plain Gemm ones, :func:`ort_gemm`) become MatMulIntegerToFloat and
    Attention targets QAttention (u8 activations, s8 per-column weights)."""
    g = GraphEditor(model, weights)
    quantized_acts: dict[str, str] = {}
    for t in sorted(targets, key=lambda t: g.position[t.node_name]):
        node = g.nodes[t.node_name]
        p = activation_params(ranges[t.activation], symmetric=False)  # the 'ort' format: uint8 activations
        base = t.activation
        if base not in quantized_acts:
            g.add_initializer(np.array(p.scale, dtype=np.float32), f"{base}_scale")
            g.add_initializer(onnx.helper.make_tensor(f"{base}_zero_point", TensorProto.UINT8, [], [p.zero_point]))
            g.insert_before(
                t.node_name,
                onnx.helper.make_node(
                    "QuantizeLinear",
                    [base, f"{base}_scale", f"{base}_zero_point"],
                    [f"{base}_quantized"],
                    name=f"{base}_QuantizeLinear",
                ),
            )
            quantized_acts[base] = f"{base}_quantized"
        gemm = plain_gemm(g.inits, node) if node.op_type == "Gemm" else None
        weight = g.array(t.weight)
        if gemm is not None and gemm[0]:
            weight = np.ascontiguousarray(weight.T)  # transB: MatMulIntegerToFloat takes [K, N]
        q, scale = quantize_weight(weight, axis=1, per_channel=per_channel, qmax=weight_qmax)
        wq = f"{t.weight}_{t.node_name}_quantized"
        g.add_initializer(q, wq)
        g.add_initializer(scale.reshape(-1) if per_channel else scale, f"{wq}_scale")
        g.add_initializer(np.zeros(scale.shape, dtype=np.int8), f"{wq}_zero_point")
        g.drop_if_unused(t.weight)
        inputs = [quantized_acts[base], wq, f"{base}_scale", f"{wq}_scale", f"{base}_zero_point", f"{wq}_zero_point"]
        if node.op_type == "Attention":
            g.insert_before(t.node_name, _qattention(node, inputs))
            g.remove(node)
            continue
        fused = _bias_add(g, node) if gemm is None else None
        output = node.output[0]
        if gemm is not None and gemm[1] is not None:
            inputs.append(gemm[1])
        elif fused is not None:
            add, bias = fused
            inputs.append(bias)
            output = add.output[0]
            g.remove(add)
        g.insert_before(
            t.node_name,
            onnx.helper.make_node("MatMulIntegerToFloat", inputs, [output], name=t.node_name, domain=MS_DOMAIN),
        )
        g.remove(node)
    model = g.finish()
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    return model
