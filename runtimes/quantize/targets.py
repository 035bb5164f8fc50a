"""Find the nodes static int8 applies to: MatMul/Gemm nodes with a constant 2-D weight, Conv
nodes with a constant 4-D weight (per output channel: axis 0), and in ONNX Runtime's fused graph
its ``Attention`` nodes (the packed [hidden, 3·hidden] Q/K/V weight).

Attention-score MatMuls (both inputs computed at run time) are never targets: quantizing them
brought neither speed nor accuracy on CPU (../shared/PEERS.md), and the mask arithmetic around
them (-3.4e38 additive terms) wrecks any per-tensor range.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection

import onnx
from onnx import numpy_helper


@dataclass(frozen=True)
class QuantTarget:
    node_name: str
    op_type: str
    activation: str      # name of the run-time input tensor
    weight: str          # name of the constant weight initializer
    weight_axis: int     # the weight's output-channel axis (per-channel scales)
    input_axis: int      # the weight's input-channel axis (SmoothQuant scales its rows)


def _gemm_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return attr.i
    return default


def fold_weight_transposes(model: onnx.ModelProto, *, keep: Collection[str] = ()) -> onnx.ModelProto:
    """``model`` where each ``Transpose`` of a 2-D initializer whose every reader (in the main graph)
    takes it as a MatMul/Gemm weight is that initializer, transposed once here. A tied LM head
    exports so (GPT-2, Qwen, Gemma: the embedding matrix transposed on every call), which left the
    largest MatMul of a prefill outside the targets and fp32. Not folded: a Transpose read by a node
    in ``keep`` (kept fp32 anyway: a folded copy would only add the matrix to the file again), or of
    an initializer that is also a graph input (its value is the caller's). The same model is
    returned when there is nothing to fold."""
    graph_inputs = {g.name for g in model.graph.input}
    inits = {i.name: i for i in model.graph.initializer if i.name not in graph_inputs}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, k))
    outputs = {o.name for o in model.graph.output}
    folds = []
    for node in model.graph.node:
        if node.op_type != "Transpose" or node.input[0] not in inits or node.output[0] in outputs:
            continue
        w = inits[node.input[0]]
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
        uses = readers.get(node.output[0], [])
        if len(w.dims) == 2 and perm == [1, 0] and uses and \
                all(user.op_type in ("MatMul", "Gemm") and k == 1 and user.name not in keep for user, k in uses):
            folds.append(node)
    if not folds:
        return model
    for node in folds:
        weight = numpy_helper.to_array(inits[node.input[0]]).T
        model.graph.initializer.append(numpy_helper.from_array(weight.copy(), node.output[0]))
        model.graph.node.remove(node)
    return model


def find_targets(model: onnx.ModelProto, *, op_types=("MatMul", "Gemm"),
                 exclude: tuple[str, ...] = ()) -> list[QuantTarget]:
    inits = {i.name: i for i in model.graph.initializer}
    targets = []
    for node in model.graph.node:
        if node.op_type not in op_types or node.name in exclude:
            continue
        if len(node.input) < 2 or node.input[1] not in inits or node.input[0] in inits:
            continue
        w = inits[node.input[1]]
        if len(w.dims) != (4 if node.op_type == "Conv" else 2) or w.data_type != onnx.TensorProto.FLOAT:
            continue  # Conv: 2-D convolutions (weight [O, I/groups, kH, kW]); the rest: [K, N] matrices
        if node.op_type == "Attention" and any(a.name == "qkv_hidden_sizes" for a in node.attribute):
            continue  # unequal Q/K/V widths: ORT has no QAttention for them
        if node.op_type == "Conv":
            out_axis, in_axis = 0, 1
        elif node.op_type == "Gemm":
            if _gemm_attr(node, "transA", 0):
                continue
            trans_b = _gemm_attr(node, "transB", 0)
            out_axis, in_axis = (0, 1) if trans_b else (1, 0)
        else:
            out_axis, in_axis = 1, 0
        targets.append(QuantTarget(node.name, node.op_type, node.input[0], node.input[1], out_axis, in_axis))
    return targets


def weight_array(model: onnx.ModelProto, name: str):
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    raise KeyError(name)
