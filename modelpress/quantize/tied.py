"""Tied embedding tables: a language model whose token embedding is its LM head's weight, transposed
(GPT-2, Qwen2.5-0.5B, Gemma), ships that matrix once.

The export holds it twice — the ``Gather``'s table and the head's transposed copy (``fold_weight_transposes``,
or the fused decoder's own copy) — and at 151,936 × 896 each copy of Qwen2.5-0.5B's is 544 MB of fp32.
:func:`tied_tables` finds the pairs by value; once the head is quantized, the lookup reads the head's
quantized matrix and the fp32 table leaves the file:

* weight-only (:func:`share_with_nbits_head`): ``GatherBlockQuantized`` on ``MatMulNBits``' weight, the
  layout onnxruntime-genai's builder writes;
* static int8 (:func:`share_with_int8_head`): the head's int8 weight ([K, V], one scale per vocabulary
  column, zero point 0) read column by column — ``Gather(axis=1)``, ``Transpose``, ``Cast``, times the
  column's scale — and divided by SmoothQuant's factors where the head's input was smoothed (its weight
  is then ``diag(f)·Eᵀ``). Plain ONNX operators, so ONNX Runtime and OpenVINO run the same graph; a
  head left fp32 is read the same way, without the scale.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from modelpress.quantize.chunks import column_chunks
from modelpress.quantize.targets import TRANSPOSE_OF


def tied_tables(model: onnx.ModelProto, read: Callable[[onnx.TensorProto], np.ndarray] | None = None) -> dict[str, str]:
    """Embedding lookups whose table is, transposed, the weight of a MatMul: {Gather output: MatMul
    node name}. Compared by value, so only a true tie is shared; ``read`` gives an initializer's value
    (an offloaded model's: ``DiskWeights.view``, a map of its bytes). A head folded from a ``Transpose`` of the
    table (``targets.fold_weight_transposes``) is tied by construction: not read at all."""
    read = read or numpy_helper.to_array
    inits = {i.name: i for i in model.graph.initializer}
    by_shape: dict[tuple[int, ...], list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if w is not None and len(w.dims) == 2 and w.data_type == TensorProto.FLOAT:
            by_shape.setdefault(tuple(w.dims), []).append(node)
    tied = {}
    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if table is None or axis != 0 or len(table.dims) != 2 or table.data_type != TensorProto.FLOAT:
            continue
        heads = by_shape.get((table.dims[1], table.dims[0]), [])
        # a head folded from a Transpose of this very table is its transpose by construction
        folded = f"{TRANSPOSE_OF}{table.name}"
        head = next((h for h in heads if inits[h.input[1]].doc_string == folded), None)
        if head is None and heads:
            e = read(table)
            head = next((h for h in heads if _transposed(read(inits[h.input[1]]), e)), None)
        if head is not None:
            tied[node.output[0]] = head.name
    return tied


def _transposed(w: np.ndarray, e: np.ndarray) -> bool:
    """``w == eᵀ``, a chunk of columns at a time (no whole-matrix temporary)."""
    return all(np.array_equal(w[:, c], e[c].T) for c in column_chunks(w.shape[1]))


def share_with_nbits_head(model: onnx.ModelProto, tied: dict[str, str]) -> list[str]:
    """Each tied lookup whose head became ``MatMulNBits`` reads the head's quantized weight through
    ``GatherBlockQuantized``: one int4/int8 matrix for both (the head's bits), the fp32 table dropped.
    MatMulNBits' weight is [N, K/block, block·bits/8] with rows = vocabulary entries: reshaped to
    [N, K·bits/8] it is the table, blocks along K, zero point 2^(bits−1) (symmetric). Returns the
    lookups shared."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    heads = {nbits_original_name(n): n for n in graph.node if n.op_type == "MatMulNBits"}
    shared = []
    for index, node in reversed(list(enumerate(graph.node))):
        head = heads.get(tied.get(node.output[0], "")) if node.op_type == "Gather" else None
        if head is None or len(head.input) > 3:  # fp32 head, or zero points: not this layout
            continue
        attrs = {a.name: a.i for a in head.attribute}
        k, n, block, bits = attrs["K"], attrs["N"], attrs["block_size"], attrs["bits"]
        if k % block:  # padded blocks: the reshaped weight would be wider than the table
            continue
        table, scales = f"{head.input[1]}_as_table", f"{head.input[2]}_as_table"
        graph.initializer.append(numpy_helper.from_array(np.array([n, k * bits // 8], np.int64), f"{table}_shape"))
        graph.initializer.append(numpy_helper.from_array(np.array([n, k // block], np.int64), f"{scales}_shape"))
        lookup = [
            onnx.helper.make_node("Reshape", [head.input[1], f"{table}_shape"], [table], name=f"{node.name}_table"),
            onnx.helper.make_node("Reshape", [head.input[2], f"{scales}_shape"], [scales], name=f"{node.name}_scales"),
            onnx.helper.make_node(
                "GatherBlockQuantized",
                [table, node.input[1], scales],
                [node.output[0]],
                name=node.name,
                domain="com.microsoft",
                bits=bits,
                block_size=block,
                gather_axis=0,
                quantize_axis=1,
            ),
        ]
        _replace(graph, index, lookup, inits)
        shared.append(node.name)
    return shared


def nbits_original_name(node: onnx.NodeProto) -> str:
    """The MatMul a ``MatMulNBits`` replaced: its quantizers name it "<name>_Q<bits>"."""
    return node.name.rsplit("_Q", 1)[0]


def share_with_int8_head(
    model: onnx.ModelProto, tied: dict[str, str], inverse_factors: dict[str, np.ndarray] | None = None
) -> list[str]:
    """Each tied lookup whose head is a static int8 MatMul (``MatMulIntegerToFloat``, or ``MatMul`` on a
    per-column ``DequantizeLinear``) or an fp32 MatMul reads that head's weight, column by column, and
    the fp32 table is dropped. ``inverse_factors``: {head node: 1/f} for a head whose input SmoothQuant
    divided by f (its weight's rows were multiplied by f). Returns the lookups shared."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    nodes = {n.name: n for n in graph.node}
    shared = []
    for index, node in reversed(list(enumerate(graph.node))):
        head = nodes.get(tied.get(node.output[0], "")) if node.op_type == "Gather" else None
        weight = _head_weight(head, producers, inits) if head is not None else None
        if head is None or weight is None:
            continue
        matrix, scale = weight
        per_column = scale is not None and bool(inits[scale].dims)
        inverse = (inverse_factors or {}).get(head.name)
        lookup = _column_lookup(graph, node, matrix, scale, per_column, inits[matrix].dims[0], inverse)
        _replace(graph, index, lookup, inits)
        shared.append(node.name)
    return shared


def _head_weight(
    head: onnx.NodeProto, producers: dict[str, onnx.NodeProto], inits: dict[str, onnx.TensorProto]
) -> tuple[str, str | None] | None:
    """The head's [K, V] weight initializer and its per-column scale (None: fp32), where the layout is
    one this module reads: symmetric int8 (the writers' zero point is 0), one scale per column."""
    if head.op_type == "MatMulIntegerToFloat":
        matrix, scale = head.input[1], head.input[3]
    elif head.op_type == "MatMul" and head.input[1] in inits:
        return head.input[1], None
    elif head.op_type == "MatMul" and (dq := producers.get(head.input[1])) is not None:
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        if dq.op_type != "DequantizeLinear" or axis != 1:
            return None
        matrix, scale = dq.input[0], dq.input[1]
    else:
        return None
    if matrix not in inits or scale not in inits or inits[matrix].data_type != TensorProto.INT8:
        return None
    if len(inits[matrix].dims) != 2 or list(inits[scale].dims) not in ([inits[matrix].dims[1]], []):
        return None
    return matrix, scale


def _column_lookup(
    graph, node, matrix: str, scale: str | None, per_column: bool, k: int, inverse: np.ndarray | None
) -> list:
    """``node``'s rows read from ``matrix``'s columns: [*ids.shape, K] like the table's lookup; ``scale``
    one per column (``per_column``) or one for the matrix, None for an fp32 head."""
    name, ids, out = node.name, node.input[1], node.output[0]
    graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), f"{name}_flat"))
    graph.initializer.append(numpy_helper.from_array(np.array([k], np.int64), f"{name}_width"))
    make = onnx.helper.make_node
    steps = [
        make("Reshape", [ids, f"{name}_flat"], [f"{name}_ids"], name=f"{name}_ids"),
        make("Gather", [matrix, f"{name}_ids"], [f"{name}_columns"], name=f"{name}_columns", axis=1),
        make("Transpose", [f"{name}_columns"], [f"{name}_rows"], name=f"{name}_rows", perm=[1, 0]),
    ]
    rows = f"{name}_rows"
    if scale is not None:
        steps.append(make("Cast", [rows], [f"{name}_float"], name=f"{name}_float", to=TensorProto.FLOAT))
        if per_column:  # each looked-up row's own column scale
            graph.initializer.append(numpy_helper.from_array(np.array([-1, 1], np.int64), f"{name}_column"))
            steps += [
                make("Reshape", [scale, f"{name}_column"], [f"{name}_scales"], name=f"{name}_scales"),
                make("Gather", [f"{name}_scales", f"{name}_ids"], [f"{name}_scale"], name=f"{name}_scale", axis=0),
            ]
        scale = f"{name}_scale" if per_column else scale
        steps.append(make("Mul", [f"{name}_float", scale], [f"{name}_dequantized"], name=f"{name}_dequantized"))
        rows = f"{name}_dequantized"
    if inverse is not None:
        graph.initializer.append(numpy_helper.from_array(inverse.astype(np.float32), f"{name}_unsmooth"))
        steps.append(make("Mul", [rows, f"{name}_unsmooth"], [f"{name}_unsmoothed"], name=f"{name}_unsmoothed"))
        rows = f"{name}_unsmoothed"
    steps += [
        make("Shape", [ids], [f"{name}_ids_shape"], name=f"{name}_ids_shape"),
        make("Concat", [f"{name}_ids_shape", f"{name}_width"], [f"{name}_shape"], name=f"{name}_shape", axis=0),
        make("Reshape", [rows, f"{name}_shape"], [out], name=name),
    ]
    return steps


def _replace(graph, index: int, lookup: list, inits: dict[str, onnx.TensorProto]) -> None:
    """The Gather at ``index`` becomes ``lookup``; its table goes when nothing else reads it."""
    old_table = graph.node[index].input[0]
    del graph.node[index]
    for offset, new in enumerate(lookup):
        graph.node.insert(index + offset, new)
    if not any(old_table in n.input for n in graph.node):
        graph.initializer.remove(inits[old_table])
