"""SmoothQuant's division folded into the node that makes the activation, where that is exact.

``apply_smoothing`` divides an activation X by per-channel factors s before its projections. An
explicit ``Mul`` is one more pass over X on every call; these producers take the division in their
own constants instead, and the tensor they write is X/s (renamed ``<X>_smoothed``):

- a LayerNorm (``LayerNormalization``, ORT's ``SkipLayerNormalization`` and their RMS forms) or a
  ``Mul`` by a per-channel constant (a decomposed RMSNorm's weight): gamma and beta divided by s,
  when the smoothed projections are the tensor's only readers. In a pre-LN decoder the LayerNorm
  feeds only Q/K/V (or the MLP); in a post-LN encoder (BERT) it feeds the residual ``Add`` as well,
  which needs X itself, so the ``Mul`` stays there.
- the attention context, softmax(·)·V merged back from heads: softmax mixes tokens, never channels,
  so dividing V's channels divides the context's. The V projection's weight columns and bias are
  divided by s (in ORT's fused ``Attention``, the V third of the packed weight and bias).

The caller scales the projections' weight rows by s as before; both scalings are exact up to float
rounding, and the V projection's per-output-channel int8 scales absorb its column scaling.
"""

from __future__ import annotations

import numpy as np
import onnx

from modelpress.quantize.graph import GraphEditor

#: producer → (gamma input, beta input or None): the per-channel affine of a normalisation
_NORMS = {
    "LayerNormalization": (1, 2),
    "SimplifiedLayerNormalization": (1, None),
    "SkipLayerNormalization": (2, 3),
    "SkipSimplifiedLayerNormalization": (2, None),
}
#: the context's path back to softmax·V: Reshape ← Transpose[0,2,1,3] ← MatMul(probs, V heads)
_HEADS_PERM = [0, 2, 1, 3]


def fold_division(g: GraphEditor, act: str, smoothed: str, s: np.ndarray) -> bool:
    """Rewrite the producer of ``act`` so that it writes ``act / s`` under the name ``smoothed``;
    False (nothing changed) where no exact fold exists. Called once the smoothed projections read
    ``smoothed``: any reader ``act`` still has needs it undivided, and blocks the fold."""
    readers = _readers(g)
    if g.is_graph_output(act) or readers.get(act):
        return False
    producer = next((n for n in g.graph.node if act in n.output), None)
    if producer is None:
        return False
    inv = (1.0 / s).astype(np.float32)
    folded = _fold_norm(g, producer, inv, readers) or _fold_context(g, producer, inv, readers)
    if folded:
        _rename_output(g, producer, act, smoothed)
    return folded


def _readers(g: GraphEditor) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in g.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _float_constant(g: GraphEditor, name: str, shape: tuple[int, ...]) -> bool:
    init = g.inits.get(name)
    return init is not None and init.data_type == onnx.TensorProto.FLOAT and tuple(init.dims) == shape


def _rescale(g: GraphEditor, node: onnx.NodeProto, index: int, factor: np.ndarray, readers) -> None:
    """Multiply ``node``'s constant input ``index`` by ``factor`` (broadcast): in place when ``node`` is
    its only reader, else in a copy of its own (the exporter shares equal constants: zero biases)."""
    name = node.input[index]
    value = (g.array(name) * factor).astype(np.float32)
    if len(readers.get(name, ())) == 1:
        g.replace_initializer(name, value)
    else:
        node.input[index] = g.add_initializer(value, f"{name}_smoothed_{node.name}")


def _fold_norm(g: GraphEditor, node: onnx.NodeProto, inv: np.ndarray, readers) -> bool:
    if node.op_type in _NORMS:
        gamma_at, beta_at = _NORMS[node.op_type]
        at = [gamma_at] if len(node.input) > gamma_at else []
        if beta_at is not None and len(node.input) > beta_at and node.input[beta_at]:
            at.append(beta_at)
    elif node.op_type == "Mul" and len(node.input) == 2:  # x · w, w per channel (a decomposed RMSNorm's weight)
        at = [k for k, name in enumerate(node.input) if name in g.inits]
        if len(at) != 1:
            return False
    else:
        return False
    if not at or not all(_float_constant(g, node.input[k], inv.shape) for k in at):
        return False
    for k in at:
        _rescale(g, node, k, inv, readers)
    return True


def _fold_context(g: GraphEditor, node: onnx.NodeProto, inv: np.ndarray, readers) -> bool:
    if node.op_type == "Attention":
        return _fold_attention_v(g, node, inv, readers)
    producer = {o: n for n in g.graph.node for o in n.output}
    # context = Reshape(Transpose[0,2,1,3](MatMul(probs, V heads))), each step read by the next only
    merge = node
    heads_back = producer.get(merge.input[0]) if merge.op_type == "Reshape" else None
    if heads_back is None or _perm(heads_back) != _HEADS_PERM or not _read_once(heads_back.output[0], readers):
        return False
    pv = producer.get(heads_back.input[0])
    if pv is None or pv.op_type != "MatMul" or not _read_once(pv.output[0], readers):
        return False
    v_proj = _v_projection(pv.input[1], producer, readers)
    if v_proj is None:
        return False
    matmul, bias_add = v_proj
    c = inv.shape[0]
    w = g.inits.get(matmul.input[1])
    if w is None or len(w.dims) != 2 or not _float_constant(g, matmul.input[1], (w.dims[0], c)):
        return False
    bias_at = None
    if bias_add is not None:
        bias_at = next(k for k, name in enumerate(bias_add.input) if name in g.inits)
        if not _float_constant(g, bias_add.input[bias_at], (c,)):
            return False
    _rescale(g, matmul, 1, inv[None, :], readers)
    if bias_add is not None and bias_at is not None:
        _rescale(g, bias_add, bias_at, inv, readers)
    return True


def _read_once(tensor: str, readers) -> bool:
    """Read by one node, not counting ``Shape`` nodes (they see no values)."""
    return len([r for r in readers.get(tensor, ()) if r.op_type != "Shape"]) == 1


def _perm(node: onnx.NodeProto) -> list[int] | None:
    if node.op_type != "Transpose":
        return None
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def _v_projection(heads: str, producer, readers) -> tuple[onnx.NodeProto, onnx.NodeProto | None] | None:
    """(V's MatMul, its bias Add or None) where ``heads`` = Transpose[0,2,1,3](Reshape(V)), V = x·W (+ b),
    every tensor on the way read once."""
    t = producer.get(heads)
    if t is None or _perm(t) != _HEADS_PERM or not _read_once(heads, readers):
        return None
    r = producer.get(t.input[0])
    if (
        r is None
        or r.op_type != "Reshape"
        or not _read_once(r.output[0], readers)
        or not _read_once(r.input[0], readers)
    ):
        return None
    node, bias_add = producer.get(r.input[0]), None
    if node is not None and node.op_type == "Add":
        consts = [i for i in node.input if i not in producer]
        computed = [i for i in node.input if i in producer]
        if len(consts) != 1 or len(computed) != 1 or not _read_once(computed[0], readers):
            return None
        bias_add, node = node, producer[computed[0]]
    if node is None or node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] in producer:
        return None
    return node, bias_add


def _fold_attention_v(g: GraphEditor, node: onnx.NodeProto, inv: np.ndarray, readers) -> bool:
    """ORT's fused ``Attention``: output = context of the packed [Q | K | V] projection's V third."""
    if any(a.name == "qkv_hidden_sizes" for a in node.attribute) or len(node.input) < 3 or not node.input[2]:
        return False
    c = inv.shape[0]
    w = g.inits.get(node.input[1])
    if w is None or len(w.dims) != 2 or not _float_constant(g, node.input[1], (w.dims[0], 3 * c)):
        return False
    if not _float_constant(g, node.input[2], (3 * c,)):
        return False
    v_third = np.concatenate([np.ones(2 * c, np.float32), inv])  # packed [Q | K | V] columns
    _rescale(g, node, 1, v_third[None, :], readers)
    _rescale(g, node, 2, v_third, readers)
    return True


def _rename_output(g: GraphEditor, node: onnx.NodeProto, old: str, new: str) -> None:
    node.output[:] = [new if o == old else o for o in node.output]
    for info in g.graph.value_info:
        if info.name == old:
            info.name = new
