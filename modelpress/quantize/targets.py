"""Find the nodes static int8 applies to: MatMul/Gemm nodes with a constant 2-D weight, Conv
nodes with a constant 4-D weight (per output channel: axis 0), and in ONNX Runtime's fused graph
its ``Attention`` nodes (the packed [hidden, 3·hidden] Q/K/V weight).

Attention-score MatMuls (both inputs computed at run time) are never weight targets. Their int8
form is a separate op class (:func:`find_attention_scores`, ``quantize.attention_scores``): Q/DQ on
the Q and K *projection outputs* (after the bias, before the reshape to heads), never on the scores
themselves, whose mask arithmetic (-3.4e38 additive terms) wrecks any per-tensor range. OpenVINO
runs Q·Kᵀ in its int8 MHA kernel on VNNI/AMX CPUs when Q and K arrive quantized (what NNCF's
transformer preset writes): MiniLM's attention subgraph 45.0 → 33.4 ms at b32×128 on Zen 4. ONNX
Runtime's ``ort`` format keeps its own attention (``QAttention``) and never gets them; its Q/DQ
graph ran 1–5 % faster with them there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection

import numpy as np
import onnx
from onnx import numpy_helper


@dataclass(frozen=True)
class QuantTarget:
    node_name: str
    op_type: str
    activation: str  # name of the run-time input tensor
    weight: str  # name of the constant weight initializer
    weight_axis: int  # the weight's output-channel axis (per-channel scales)
    input_axis: int  # the weight's input-channel axis (SmoothQuant scales its rows)


def _gemm_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return attr.i
    return default


#: the doc string of an initializer :func:`fold_weight_transposes` made, before its source's name
TRANSPOSE_OF = "transpose of "


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
        if (
            len(w.dims) == 2
            and perm == [1, 0]
            and uses
            and all(user.op_type in ("MatMul", "Gemm") and k == 1 and user.name not in keep for user, k in uses)
        ):
            folds.append(node)
    if not folds:
        return model
    for node in folds:
        weight = np.ascontiguousarray(numpy_helper.to_array(inits[node.input[0]]).T)
        folded = numpy_helper.from_array(weight, node.output[0])
        del weight
        folded.doc_string = f"{TRANSPOSE_OF}{node.input[0]}"  # a tied head: quantize.tied reads it so
        model.graph.initializer.append(folded)
        model.graph.node.remove(node)
    return model


#: what may stand between an output layer and the graph output it writes (a bias, a cast)
_OUTPUT_HOPS = ("Add", "Cast", "Identity")


def output_layers(model: onnx.ModelProto, names: Collection[str]) -> list[str]:
    """Those of ``names`` (weight MatMuls) that write a graph output — directly or through a bias
    ``Add``, a ``Cast`` or an ``Identity`` read by nothing else: an LM's head, a classifier. A KV
    projection (reshaped, rotated, concatenated before it is a ``present``) is not one."""
    outputs = {o.name for o in model.graph.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    found = []
    for node in model.graph.node:
        if node.name not in names:
            continue
        tensor = node.output[0]
        for _ in range(len(_OUTPUT_HOPS) + 1):
            if tensor in outputs:
                found.append(node.name)
                break
            users = readers.get(tensor, [])
            if len(users) != 1 or users[0].op_type not in _OUTPUT_HOPS:
                break
            tensor = users[0].output[0]
    return found


def find_targets(
    model: onnx.ModelProto, *, op_types=("MatMul", "Gemm"), exclude: tuple[str, ...] = ()
) -> list[QuantTarget]:
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


@dataclass(frozen=True)
class ScoreMatMul:
    """An attention-score MatMul (Q·Kᵀ) and the projection outputs its two inputs are views of."""

    node_name: str
    query: str  # the Q projection's output (bias added), before the reshape to heads
    key: str  # the K projection's output
    query_reader: str  # the node that reads ``query`` on the way to the MatMul (Q/DQ goes before it)
    key_reader: str


#: pooling ops whose input a convolutional network's int8 graph quantizes (OpenVINO then pools int8 data)
POOLING = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})


@dataclass(frozen=True)
class EltwiseInput:
    """An input of a convolutional network's residual Add or pooling node (``reader``)."""

    tensor: str
    reader: str


def find_eltwise_inputs(model: onnx.ModelProto, targets: list["QuantTarget"]) -> list[EltwiseInput]:
    """Where a convolutional network's int8 graph for OpenVINO also quantizes (NNCF's placement: its
    ResNet IR has FakeQuantize on these beside the Conv inputs): both inputs of each residual ``Add``
    (two run-time inputs) whose output a Conv or a pooling node reads, directly or through a Relu,
    and the input of each pooling node (a ``ReduceMean`` over H and W is one: the global average
    pool). None without a Conv target, and none for a transformer's residual Adds (a ViT's patch
    embedding is a Conv, but its Adds feed norms)."""
    if not any(t.op_type == "Conv" for t in targets):
        return []
    graph = model.graph
    produced = {o for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    inits = {i.name: i for i in graph.initializer}

    def pools(node: onnx.NodeProto) -> bool:
        if node.op_type in POOLING:
            return True
        if node.op_type != "ReduceMean":  # a global average pool, exported over H and W
            return False
        axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
        if axes is None and len(node.input) > 1 and node.input[1] in inits:
            axes = numpy_helper.to_array(inits[node.input[1]]).tolist()
        return axes is not None and set(axes) in ({2, 3}, {-2, -1})

    def feeds_conv_or_pool(tensor: str) -> bool:
        for reader in readers.get(tensor, []):
            if reader.op_type == "Conv" or pools(reader):
                return True
            if reader.op_type == "Relu" and feeds_conv_or_pool(reader.output[0]):
                return True
        return False

    sites: list[EltwiseInput] = []
    for node in graph.node:
        if node.op_type == "Add" and len(node.input) == 2 and all(x in produced for x in node.input):
            if feeds_conv_or_pool(node.output[0]):
                sites.extend(EltwiseInput(x, node.name) for x in node.input)
        elif pools(node) and node.input[0] in produced:
            sites.append(EltwiseInput(node.input[0], node.name))
    return sites


#: ops that only move or rename values: a Q/DQ before them quantizes exactly what comes out of them
_LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Flatten"})
#: ops between the score MatMul and its Softmax: the 1/√d scale, the additive mask, masked_fill
_SCORE_OPS = frozenset({"Div", "Mul", "Add", "Sub", "Where", "Cast"})
#: readers that see a tensor's shape only (the reshapes of a decomposed SDPA compute theirs from it)
_SHAPE_OPS = frozenset({"Shape", "Size"})


def find_attention_scores(model: onnx.ModelProto) -> list[ScoreMatMul]:
    """The Q·Kᵀ MatMuls of the graph: both inputs computed at run time, each a chain of layout ops
    (and scalings by a constant scalar: 1/√d folded into Q or K) over a projection output — a
    MatMul/Gemm with a constant weight, plus its constant bias when there is one — and the product
    reaching a Softmax through scale/mask arithmetic. The attention·V MatMul reads a Softmax and is
    not one. A chain whose intermediate tensors are read elsewhere (a cache output) is skipped, so
    a Q/DQ there changes nothing but the scores (a ``Shape`` reader does not count: it sees no values).
    Both spellings of the exporters are found: eager attention (1/√d after the MatMul) and
    SDPA's decomposition (√(1/√d) on Q and on Kᵀ, the head reshapes computed from shapes)."""
    graph = model.graph
    consts = {i.name: i for i in graph.initializer}
    consts.update({n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output})
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    found = []
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or any(i in consts for i in node.input):
            continue
        q = _projection_source(node.input[0], node, producer, readers, consts, outputs)
        k = _projection_source(node.input[1], node, producer, readers, consts, outputs)
        if q is None or k is None or q[0] == k[0] or not _reaches_softmax(node.output[0], readers):
            continue
        found.append(ScoreMatMul(node.name, q[0], k[0], q[1], k[1]))
    return found


def _projection_source(tensor: str, reader: onnx.NodeProto, producer, readers, consts, outputs):
    """(projection output, the node on the path that reads it), or None when ``tensor`` is not a
    view of a projection output read only on the way to ``reader``."""
    for _ in range(8):
        node = producer.get(tensor)
        if node is None:
            return None
        if _is_projection_output(node, producer, consts):
            return tensor, reader.name
        if tensor in outputs or len([r for r in readers.get(tensor, ()) if r.op_type not in _SHAPE_OPS]) != 1:
            return None
        scaled = node.op_type in ("Mul", "Div") and _is_scalar_const(node.input[1], consts)
        if node.op_type in _LAYOUT_OPS or scaled:
            data = node.input[0]
        elif node.op_type == "Mul" and _is_scalar_const(node.input[0], consts):
            data = node.input[1]
        else:
            return None
        tensor, reader = data, node
    return None


def _is_projection_output(node: onnx.NodeProto, producer, consts) -> bool:
    if node.op_type in ("MatMul", "Gemm"):
        return len(node.input) >= 2 and node.input[1] in consts and node.input[0] not in consts
    if node.op_type != "Add" or len(node.input) != 2:
        return False
    bias = [i for i in node.input if i in consts]
    other = [producer.get(i) for i in node.input if i not in consts]
    return (
        len(bias) == 1
        and len(other) == 1
        and other[0] is not None
        and other[0].op_type in ("MatMul", "Gemm")
        and _is_projection_output(other[0], producer, consts)
    )


def _is_scalar_const(name: str, consts) -> bool:
    value = consts.get(name)
    if value is None:
        return False
    if isinstance(value, onnx.NodeProto):  # a Constant node
        attr = next((a for a in value.attribute if a.name == "value"), None)
        if attr is not None:
            return int(np.prod(attr.t.dims)) == 1
        return any(a.name in ("value_float", "value_int") for a in value.attribute)
    return int(np.prod(value.dims)) == 1


def _reaches_softmax(tensor: str, readers, depth: int = 4) -> bool:
    frontier = [tensor]
    for _ in range(depth):
        nxt = []
        for t in frontier:
            for node in readers.get(t, ()):
                if node.op_type == "Softmax":
                    return True
                if node.op_type in _SCORE_OPS:
                    nxt.extend(node.output)
        frontier = nxt
    return False
