"""Weight-only quantization (``quantize.mode = "weight-only"``): the documented alternative to static
W8A8, for decoders whose decode steps are bound by reading weights rather than by arithmetic.

Every constant-weight ``MatMul`` (and every plain ``Gemm``: GPT-2's projections, rewritten first as
``MatMul`` + bias ``Add`` with the same node name) becomes ONNX Runtime's ``MatMulNBits`` through ORT's
own quantizer (``onnxruntime.quantization.matmul_nbits_quantizer``): weights in ``weight_bits`` (8
or 4) bits, symmetric, one fp32 scale per block of ``block_size`` input rows of each output column
(blockwise: finer than per-channel; ORT's kernels take blocks of 16–256). Activations stay fp32 in
the graph. Round to nearest (``int4_method = "rtn"``, and every 8-bit graph) reads no calibration
data; at 4 bits, ``int4_method = "awq"`` / ``"gptq"`` and ``int8_budget`` choose the integers from
the calibration set (``int4_data``) and write the same ``MatMulNBits`` nodes; ``head_bits = 8`` writes
the output layer (``targets.output_layers``: an LM head, a classifier) 8-bit, round to nearest, at
``blockwise.head_block`` — the one weight whose error reaches the outputs undiluted by the residual
stream, and on the bench GPT most of what int4 loses. ``accuracy_level``
is ``MatMulNBits``' attribute: 0 or 1 compute in fp32 on dequantized weights; 4 lets the CPU
kernel quantize each activation block to int8 on the fly and use its int8 dot products — on this
project's AVX2 CPU the only fast kernel at batch 1 (one 384×1536 MatMul, 8 bits, block 32, quiet:
2.0 ms at level 0, 0.060 ms at level 4, 0.053 ms fp32). ``nodes_to_exclude`` stays fp32;
attention-score MatMuls (no constant weight) and the KV cache are never touched;
``nodes_to_exclude`` takes node names or module paths, as for static int8.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx
import psutil
from onnx import numpy_helper

from modelpress.errors import BadInputError
from modelpress.fileio import maps_weights, copy_model, load_onnx, save_onnx
from modelpress.quantize.config import QuantizeConfig
from modelpress.quantize.blockwise import head_block, matmulnbits_node, quantize_rtn_by_columns, replace_nodes
from modelpress.quantize.int4_data import quantize_data_aware
from modelpress.quantize.offload import DiskWeights
from modelpress.quantize.ort_ops import plain_gemm
from modelpress.quantize.static import QuantizeSummary, excluded_nodes
from modelpress.quantize.targets import fold_weight_transposes, output_layers
from modelpress.quantize.tied import nbits_original_name, share_with_nbits_head, tied_tables

log = logging.getLogger(__name__)


def gemms_as_matmuls(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself when it has no plain Gemm, else a copy where each plain Gemm with a constant
    weight is ``MatMul(A, W)`` (W transposed into a new initializer when ``transB``) followed by
    ``Add(bias)``; the MatMul keeps the Gemm's name."""
    inits = {i.name: i for i in model.graph.initializer}
    if not any(n.op_type == "Gemm" and plain_gemm(inits, n) is not None for n in model.graph.node):
        return model  # nothing to rewrite: no copy of the weights
    model = copy_model(model)  # deepcopy serializes: past 2 GiB it fails
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = []
    for index, node in enumerate(graph.node):
        plain = plain_gemm(inits, node) if node.op_type == "Gemm" else None
        if plain is None or node.input[1] not in inits:
            nodes.append(node)
            continue
        trans_b, bias = plain
        name = node.name or f"Gemm_{index}"  # the summary and exclusions speak of node names
        weight = node.input[1]
        if trans_b:
            w = numpy_helper.to_array(inits[weight]).T
            weight = f"{node.input[1]}_transposed_for_{name}"
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), weight))
        out = node.output[0] if bias is None else f"{node.output[0]}_before_bias"
        matmul = onnx.helper.make_node("MatMul", [node.input[0], weight], [out], name=name)
        matmul.metadata_props.extend(node.metadata_props)  # the module path the analysis and exclusions read
        nodes.append(matmul)
        if bias is not None:
            nodes.append(onnx.helper.make_node("Add", [out, bias], [node.output[0]], name=f"{name}_bias"))
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _weight_matmuls(model: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def data_aware(cfg: QuantizeConfig) -> bool:
    """Whether ``cfg`` reads the calibration set (``int4_method`` other than RTN, or an int8 budget)."""
    return cfg.mode == "weight-only" and cfg.weight_bits == 4 and (cfg.int4_method != "rtn" or cfg.int8_budget > 0)


def _ort_rtn(model: onnx.ModelProto, excluded: list[str], cfg: QuantizeConfig) -> onnx.ModelProto:
    """ORT's own round-to-nearest quantizer on ``model``: every eligible MatMul but ``excluded``."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    algo = DefaultWeightOnlyQuantConfig(
        block_size=cfg.block_size,
        is_symmetric=True,
        bits=cfg.weight_bits,
        accuracy_level=cfg.accuracy_level,
        op_types_to_quantize=("MatMul",),
    )
    quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=list(excluded), algo_config=algo)
    quantizer.process()
    return quantizer.model.model


def _eight_bit_heads(model: onnx.ModelProto, heads: list[str], cfg: QuantizeConfig) -> onnx.ModelProto:
    """``model`` with each of ``heads`` (fp32 MatMuls) as an 8-bit ``MatMulNBits``, round to nearest."""
    if not heads:
        return model
    inits = {i.name: i for i in model.graph.initializer}
    written = {}
    for node in model.graph.node:
        if node.name in heads:
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32, copy=False)
            q = quantize_rtn_by_columns(w, 8, head_block(w.shape[0], cfg.block_size))
            del w
            written[node.name] = matmulnbits_node(model, node, q, accuracy_level=cfg.accuracy_level)
    replace_nodes(model, written)
    return model


def quantize_weights_only(
    onnx_path: str | Path,
    out_path: str | Path,
    cfg: QuantizeConfig,
    feeds: Iterable[Mapping[str, np.ndarray]] | None = None,
) -> QuantizeSummary:
    """``onnx_path`` → ``out_path`` with ``MatMulNBits`` weights (atomically); what was done.
    ``feeds``: the calibration batches the data-aware int4 methods read (:func:`data_aware`)."""
    started = time.perf_counter()
    original = load_onnx(onnx_path)
    # node names or module paths, as static int8 reads them (the rewritten Gemms keep their names)
    wanted_fp32 = set(excluded_nodes(original, cfg.nodes_to_exclude, source=onnx_path))
    model = gemms_as_matmuls(fold_weight_transposes(original, keep=wanted_fp32))
    del original  # the data-aware path frees the in-memory weights: no other reference may hold them
    eligible = _weight_matmuls(model)
    if not eligible:
        raise BadInputError(f"{onnx_path}: no MatMul/Gemm node with a constant weight for weight-only quantization")
    excluded = [n for n in eligible if n in wanted_fp32]
    log.info(
        "weight-only int%d: %d MatMul weights, block %d, accuracy level %d",
        cfg.weight_bits,
        len(eligible) - len(excluded),
        cfg.block_size,
        cfg.accuracy_level,
    )
    tied = tied_tables(model)
    heads = output_layers(model, [n for n in eligible if n not in wanted_fp32]) if cfg.eight_bit_head else []
    if heads:
        log.info("8-bit output layer (head_bits = 8): %s", ", ".join(heads))
    layers: list = []
    if data_aware(cfg):
        if feeds is None:
            raise BadInputError(
                f"quantize.int4_method = {cfg.int4_method!r} needs the calibration set (calibration.data)"
            )
        log.info("int4 %s from the calibration set (int8 budget %.0f %%)", cfg.int4_method, 100 * cfg.int8_budget)
        targets = [n for n in eligible if n not in wanted_fp32]
        weights = DiskWeights.beside(Path(out_path), ".int4-weights-")
        try:
            model = weights.offload(model)  # rebound: the in-memory weights are freed
            qmodel, layers = quantize_data_aware(
                model, targets, feeds, cfg, tied_heads=set(tied.values()), weights=weights, eight_bit=heads
            )
            shared = share_with_nbits_head(qmodel, tied)  # before reloading: a shared table stays on disk
            weights.reload(qmodel)
        finally:
            weights.close()
    else:
        qmodel = _eight_bit_heads(_ort_rtn(model, excluded + heads, cfg), heads, cfg)
        shared = share_with_nbits_head(qmodel, tied)
    if shared:
        log.info("tied embedding %s reads the LM head's quantized weight", ", ".join(shared))
    # the quantizers name each new node "<name>_Q<bits>"; the summary speaks of the graph's names
    written = {nbits_original_name(n) for n in qmodel.graph.node if n.op_type == "MatMulNBits"}
    eight_bit = {
        nbits_original_name(n)
        for n in qmodel.graph.node
        if n.op_type == "MatMulNBits" and any(a.name == "bits" and a.i == 8 for a in n.attribute)
    }
    save_onnx(qmodel, Path(out_path), external_data=maps_weights(qmodel))
    quantized = tuple(n for n in eligible if n in written)
    return QuantizeSummary(
        preset=cfg.preset,
        format="matmulnbits",
        calibration_method="none",
        smoothquant=False,
        weight_bits=cfg.weight_bits,
        quantized_nodes=quantized,
        fp32_nodes=tuple(n for n in eligible if n not in written),
        tensors=(),
        calibration_seconds=round(time.perf_counter() - started, 2),
        peak_rss_mb=round(psutil.Process(os.getpid()).memory_info().rss / 2**20, 1),
        block_size=cfg.block_size,
        accuracy_level=cfg.accuracy_level,
        shared_embeddings=tuple(shared),
        int4_method=cfg.int4_method if cfg.weight_bits == 4 else None,
        layers=tuple(layers),
        eight_bit_nodes=tuple(n for n in eligible if n in eight_bit) if cfg.weight_bits == 4 else (),
    )
