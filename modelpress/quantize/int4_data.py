"""Data-aware weight-only int4 (``quantize.int4_method`` = "awq" | "gptq", and the int4/int8 mix of
``quantize.int8_budget``): the calibration set's activations choose the integers that go into the
same ``MatMulNBits`` graph the round-to-nearest path writes (``weight_only`` calls this).

One streamed pass of the fp32 graph over the calibration feeds (``int4_stats``) gathers, per MatMul
input, what the method reads. Per group of MatMuls sharing an input: AWQ searches its scales and
clip ratios (``int4_awq``), GPTQ quantizes each weight against XᵀX (``int4_gptq``). Each MatMul's
relative output error on the calibration sample, ‖x·W − x·Ŵ‖² / ‖x·W‖², is measured for its int4
weight, for int4 round-to-nearest and for int8: with ``int8_budget`` > 0, the MatMuls whose int4
error is largest stay 8-bit until the extra bytes reach that share of the all-int4 weights.
AWQ's 1/s goes into the norm before the group where the input comes straight from one
(``LayerNormalization``'s scale and bias, ``SimplifiedLayerNormalization``'s and the Skip forms' of
ONNX Runtime's fused graphs; an RMSNorm exported as a ``Mul`` by its weight) and nothing else reads
it, else into an explicit ``Mul``; a LM head tied to the embedding table is never scaled (the
lookup shares its quantized matrix).

Memory is bounded for decoders of 0.5 B parameters and more: the weights stay on disk (``offload``)
and each MatMul's is read when its group's turn comes; the statistics (GPTQ's XᵀX: 95 MB per
4,864-wide input, 2.3 GB for a 0.5 B decoder's) are gathered in as many calibration passes as it
takes to keep each pass's within :data:`STATS_SHARE` of the target weights' bytes, each pass's
groups quantized before the next pass starts; wide weights (the LM head) are quantized and measured
a chunk of output columns at a time (``chunks.COLUMNS``). Every pass samples each activation as
one pass would: the result does not depend on how many passes there were.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Callable, Collection, Iterable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from modelpress.quantize.blockwise import (
    BlockQuant,
    head_block,
    matmulnbits_node,
    quantize_rtn,
    quantize_rtn_by_columns,
    replace_nodes,
)
from modelpress.quantize.chunks import column_chunks, sum_sq
from modelpress.quantize.config import QuantizeConfig
from modelpress.quantize.int4_awq import AwqScales, clip_search, output_error, search_scales
from modelpress.quantize.int4_gptq import gptq_quantize
from modelpress.quantize.int4_stats import ActivationStats, collect_activation_stats, stats_bytes
from modelpress.quantize.offload import DiskWeights
from modelpress.quantize.static import LayerQuant

log = logging.getLogger(__name__)

SAMPLE_ROWS = 1024  # calibration token rows per MatMul input on which errors are measured
#: the most bytes of statistics one calibration pass holds, as a share of the target weights' bytes
STATS_SHARE = 0.5
#: norms whose first output is linear in these inputs (scale, and the bias added after it): 1/s goes there
NORM_SCALES = {
    "LayerNormalization": (1, 2),
    "SimplifiedLayerNormalization": (1,),
    "SkipLayerNormalization": (2, 3),
    "SkipSimplifiedLayerNormalization": (2,),
}


@dataclass
class _Layer:
    name: str
    tensor: str  # its [K, N] weight's initializer
    k: int
    n: int
    quant: BlockQuant | None = None  # of weight·diag(s)
    record: LayerQuant | None = None


def _errors(x: np.ndarray, w: np.ndarray, quant: BlockQuant, s: np.ndarray, block: int) -> tuple[float, float, float]:
    """Relative output errors ‖x·W − x·Ŵ‖² / ‖x·W‖² on the sample ``x`` of ``quant`` (of W·diag(s), so
    Ŵ = its dequantized ÷ s), of int4 round-to-nearest and of int8 (of W·diag(s)); by column chunks."""
    ref = err = rtn = int8 = 0.0
    for c in column_chunks(w.shape[1]):
        wc = w[:, c]
        ref += sum_sq(x @ wc)
        err += output_error(x, wc, quant.dequantized(c) / s)
        rtn += output_error(x, wc, quantize_rtn(wc, 4, block).dequantized())
        int8 += output_error(x, wc, quantize_rtn(wc * s, 8, block).dequantized() / s)
    ref = max(ref, 1e-30)
    return err / ref, rtn / ref, int8 / ref


def _quantize_group(
    layers: list[_Layer],
    weights: list[np.ndarray],
    stats: ActivationStats,
    cfg: QuantizeConfig,
    *,
    fixed: bool,
    eight_bit: Collection[str] = (),
) -> AwqScales | None:
    """Each layer's int4 weight by the method (those in ``eight_bit``: 8-bit round to nearest, at
    :func:`~modelpress.quantize.blockwise.head_block`); AWQ's scales for the group (None: not scaled)."""
    x, block, method = stats.sample, cfg.block_size, cfg.int4_method
    scales = None
    if method == "awq":
        scales = search_scales(stats.mean_abs, x, weights, bits=4, block=block, fixed=fixed)
    s = scales.scales[:, None] if scales is not None else np.ones((x.shape[1], 1), np.float32)
    for la, w in zip(layers, weights):
        bits = 8 if la.name in eight_bit else 4
        if bits == 8:
            la.quant = quantize_rtn_by_columns(w, 8, head_block(la.k, block), s if scales is not None else None)
        elif method == "awq":
            # the clip search weighs each block alone (no cross-block terms): kept only where the whole
            # weight's output error falls
            plain = quantize_rtn(w * s, 4, block)
            clipped = clip_search(w * s, x / s[:, 0], bits=4, block=block)
            errors = [output_error(x, w, q.dequantized() / s) for q in (plain, clipped)]
            la.quant = clipped if errors[1] < errors[0] else plain
        elif method == "gptq":
            la.quant = gptq_quantize(w, stats.xtx, bits=4, block=block)  # type: ignore[arg-type]  # hessian=True
        else:
            la.quant = quantize_rtn(w, 4, block)
        error, error_rtn, error_int8 = _errors(x, w, la.quant, s, block)
        la.record = LayerQuant(
            node=la.name,
            bits=bits,
            method=method if bits == 4 else "rtn",
            error=round(error, 8),
            error_rtn=round(error_rtn, 8),
            error_int8=round(error_int8, 8),
            alpha=scales.alpha if scales is not None else None,
        )
    return scales if scales is not None and scales.alpha > 0 else None


def _passes(groups: Mapping[str, list[_Layer]], *, hessian: bool) -> list[list[str]]:
    """The activations in calibration passes, in graph order, each pass's statistics within
    :data:`STATS_SHARE` of the target weights' bytes (a pass has at least one activation)."""
    budget = STATS_SHARE * sum(4 * la.k * la.n for layers in groups.values() for la in layers)
    passes: list[list[str]] = []
    held = 0
    for activation, layers in groups.items():
        need = stats_bytes(layers[0].k, SAMPLE_ROWS, hessian)
        if not passes or held + need > budget:
            passes.append([])
            held = 0
        passes[-1].append(activation)
        held += need
    return passes


def _keep_int8(layers: list[_Layer], budget: float) -> set[str]:
    """The MatMuls kept 8-bit: most sensitive first (largest int4 error over int8's), while the
    bytes they add stay within ``budget`` × the all-int4 weights' bytes."""
    done = [
        (la.name, la.quant, la.record)
        for la in layers
        if la.quant is not None and la.record is not None and la.quant.bits == 4  # not already 8-bit
    ]
    allowed, kept = budget * sum(q.nbytes for _, q, _ in done), set()
    for name, q, record in sorted(done, key=lambda d: d[2].error - d[2].error_int8, reverse=True):
        extra = q.nbytes - q.scales.size * 4  # int8 codes: twice the int4 bytes, the same scales
        if extra <= allowed:
            allowed -= extra
            kept.add(name)
    return kept


def _fold_scales(model: onnx.ModelProto, activation: str, s: np.ndarray, group: list[str], read: Callable) -> str:
    """Divide ``activation`` by ``s`` for the MatMuls of ``group``: in its norm's weights when it comes
    straight from one and only the group reads it, else through a new ``Mul``. Returns where."""
    graph = model.graph
    readers = [n for n in graph.node if activation in n.input]
    producer = next((n for n in graph.node if activation in n.output), None)
    inits = {i.name: i for i in graph.initializer}
    only_group = {n.name for n in readers} == set(group) and activation not in {o.name for o in graph.output}
    if producer is not None and only_group:
        slots = NORM_SCALES.get(producer.op_type)
        if slots is not None and producer.output[0] == activation:
            present = [i for i in slots if i < len(producer.input) and producer.input[i]]
            if all(producer.input[i] in inits for i in present):
                for i in present:
                    producer.input[i] = _divided(model, inits[producer.input[i]], s, producer.name, read)
                return "norm"
        consts = [i for i, name in enumerate(producer.input) if name in inits]
        if producer.op_type == "Mul" and len(consts) == 1 and inits[producer.input[consts[0]]].dims[-1:] == [s.size]:
            slot = consts[0]
            producer.input[slot] = _divided(model, inits[producer.input[slot]], s, producer.name, read)
            return "norm"
    scaled, inv = f"{activation}_awq", f"{activation}_awq_inv_scale"
    graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
    first = min(i for i, n in enumerate(graph.node) if n.name in group)
    graph.node.insert(first, onnx.helper.make_node("Mul", [activation, inv], [scaled], name=f"{activation}_awq_mul"))
    for node in graph.node:
        if node.name in group:
            node.input[0] = scaled
    return "mul"


def _divided(model: onnx.ModelProto, tensor: onnx.TensorProto, s: np.ndarray, owner: str, read: Callable) -> str:
    """A new initializer: ``tensor`` ÷ ``s`` along its last axis (the old one may be shared)."""
    name = f"{tensor.name}_awq_of_{owner}"
    value = read(tensor).astype(np.float32) / s
    model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    return name


def quantize_data_aware(
    model: onnx.ModelProto,
    targets: list[str],
    feeds: Iterable[Mapping[str, np.ndarray]],
    cfg: QuantizeConfig,
    *,
    tied_heads: set[str],
    weights: DiskWeights | None = None,
    eight_bit: Collection[str] = (),
) -> tuple[onnx.ModelProto, list[LayerQuant]]:
    """``model`` (edited in place) with each of ``targets`` (MatMul names, constant [K, N] weights) as
    ``MatMulNBits`` of the method's integers; one record per MatMul. ``weights``: where ``model``'s
    weights are when it is offloaded; those not replaced are still there on return. ``eight_bit``:
    targets written 8-bit whatever the budget (``quantize.head_bits = 8``)."""
    inits = {i.name: i for i in model.graph.initializer}
    wanted = set(targets)
    groups: dict[str, list[_Layer]] = defaultdict(list)
    for node in model.graph.node:
        if node.name in wanted:
            w = inits[node.input[1]]
            if len(w.dims) == 2:
                groups[node.input[0]].append(_Layer(node.name, w.name, *w.dims))
    hessian = cfg.int4_method == "gptq"
    passes = _passes(groups, hessian=hessian)
    if len(passes) > 1:
        feeds = list(feeds)  # read once per pass
        log.info("int4 %s: statistics in %d calibration passes (memory bound)", cfg.int4_method, len(passes))
    seeds = {a: i for i, a in enumerate(groups)}

    read = weights.array if weights is not None else numpy_helper.to_array

    def weight(la: _Layer) -> np.ndarray:
        return read(inits[la.tensor]).astype(np.float32, copy=False)

    folded: dict[str, AwqScales] = {}
    for number, activations in enumerate(passes, 1):
        stats = collect_activation_stats(
            model,
            {a: groups[a][0].k for a in activations},
            feeds,
            sample_rows=SAMPLE_ROWS,
            hessian=hessian,
            exclude_padding=cfg.exclude_padding,
            seeds=seeds,
            weights_dir=weights.folder if weights is not None else None,
            desc="int4 calibration" if len(passes) == 1 else f"int4 calibration {number}/{len(passes)}",
        )
        for activation in activations:
            layers = groups[activation]
            fixed = any(la.name in tied_heads for la in layers)
            scales = _quantize_group(
                layers, [weight(la) for la in layers], stats.pop(activation), cfg, fixed=fixed, eight_bit=eight_bit
            )
            if scales is not None:
                folded[activation] = scales
            log.info(
                "%s: %s",
                ", ".join(la.name for la in layers),
                ", ".join(f"{la.record.error:.2e} (rtn {la.record.error_rtn:.2e})" for la in layers),  # type: ignore[union-attr]
            )
    every = [la for layers in groups.values() for la in layers]
    int8 = _keep_int8(every, cfg.int8_budget) if cfg.int8_budget > 0 else set()
    for activation, scales in folded.items():
        where = _fold_scales(model, activation, scales.scales, [la.name for la in groups[activation]], read)
        log.debug("AWQ scales of %s (alpha %.2f) folded into the %s", activation, scales.alpha, where)
    nodes = {n.name: n for n in model.graph.node}
    written = {}
    for activation, layers in groups.items():
        s = folded[activation].scales[:, None] if activation in folded else None
        for la in layers:
            if la.name in int8:  # by column chunks: the budget may pick a 151,936-column head
                la.quant = quantize_rtn_by_columns(weight(la), 8, cfg.block_size, s)
                la.record = replace(la.record, bits=8, method="rtn")  # type: ignore[type-var]
            written[la.name] = matmulnbits_node(model, nodes[la.name], la.quant, accuracy_level=cfg.accuracy_level)  # type: ignore[arg-type]
            la.quant = None  # packed into the graph: the codes go
    replace_nodes(model, written)
    return model, [la.record for la in every]  # type: ignore[misc]
