"""Weight-only quantization (``quantize.mode = "weight-only"``): the documented alternative to static
W8A8, for decoders whose decode steps are bound by reading weights rather than by arithmetic.

Every constant-weight ``MatMul`` (and every plain ``Gemm``: GPT-2's projections, rewritten first as
``MatMul`` + bias ``Add`` with the same node name) becomes ONNX Runtime's ``MatMulNBits`` through ORT's
own quantizer (``onnxruntime.quantization.matmul_nbits_quantizer``): weights in ``weight_bits`` (8
or 4) bits, symmetric, one fp32 scale per block of ``block_size`` input rows of each output column
(blockwise: finer than per-channel; ORT's kernels take blocks of 16–256). No calibration data is
read: activations stay fp32 in the graph. ``accuracy_level`` is ``MatMulNBits``' attribute: 0 or 1
compute in fp32 on dequantized weights; 4 lets the CPU kernel quantize each activation block to
int8 on the fly and use its int8 dot products — on this project's AVX2 CPU the only fast kernel
at batch 1 (one 384×1536 MatMul, 8 bits, block 32, quiet: 2.0 ms at level 0, 0.060 ms at level 4,
0.053 ms fp32). ``nodes_to_exclude`` stays fp32; attention-score MatMuls (no constant
weight) and the KV cache are never touched; ``nodes_to_exclude`` takes node names or module paths, as
for static int8.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path

import numpy as np
import onnx
import psutil
from onnx import numpy_helper

from modelpress.errors import BadInputError
from modelpress.fileio import load_onnx, save_onnx
from modelpress.quantize.config import QuantizeConfig
from modelpress.quantize.ort_ops import plain_gemm
from modelpress.quantize.static import QuantizeSummary, excluded_nodes
from modelpress.quantize.targets import fold_weight_transposes

log = logging.getLogger(__name__)


def gemms_as_matmuls(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where each plain Gemm with a constant weight is ``MatMul(A, W)`` (W transposed into
    a new initializer when ``transB``) followed by ``Add(bias)``; the MatMul keeps the Gemm's name."""
    model = copy.deepcopy(model)
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


def quantize_weights_only(onnx_path: str | Path, out_path: str | Path, cfg: QuantizeConfig) -> QuantizeSummary:
    """``onnx_path`` → ``out_path`` with ``MatMulNBits`` weights (atomically); what was done."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    started = time.perf_counter()
    original = load_onnx(onnx_path)
    # node names or module paths, as static int8 reads them (the rewritten Gemms keep their names)
    wanted_fp32 = set(excluded_nodes(original, cfg.nodes_to_exclude, source=onnx_path))
    model = gemms_as_matmuls(fold_weight_transposes(original, keep=wanted_fp32))
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
    algo = DefaultWeightOnlyQuantConfig(
        block_size=cfg.block_size,
        is_symmetric=True,
        bits=cfg.weight_bits,
        accuracy_level=cfg.accuracy_level,
        op_types_to_quantize=("MatMul",),
    )
    quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=list(excluded), algo_config=algo)
    quantizer.process()
    qmodel = quantizer.model.model
    # ORT's quantizer names each new node "<name>_Q<bits>"; the summary speaks of the graph's names
    written = {n.name.rsplit(f"_Q{cfg.weight_bits}", 1)[0] for n in qmodel.graph.node if n.op_type == "MatMulNBits"}
    save_onnx(qmodel, Path(out_path))
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
    )
