"""Tell, without TensorRT, whether a Q/DQ ONNX model meets TensorRT's explicit-quantization rules.

Place in the pipeline: runs on ``model.int8.onnx`` before ``modelpress engine`` (and in CI, where
there is no GPU), so a model that TensorRT would reject or silently run differently from ONNX
Runtime is refused early, with the offending nodes named.

Rules (TensorRT 10 ``IQuantizeLayer`` / ``IDequantizeLayer`` docs and the ONNX-TensorRT operator
matrix, opset 9..24):

``int8``                 Q/DQ data type must be int8. uint8 is only allowed as a network I/O type,
                         int32 (ONNX Runtime's quantized biases) is not a TensorRT quantized type,
                         and a missing zero point means uint8 in ONNX.
``zero-point``           zero points must all be 0: TensorRT only does symmetric quantization.
``scale``                scales must be build-time constants, strictly positive and finite.
``constant-params``      scale and zero point must be initializers or ``Constant`` outputs.
``activation-per-tensor`` activations are quantized per tensor only.
``weight-axis``          per-channel weight scales must lie on the output-channel axis: MatMul
                         weight [K, N] -> last axis; Gemm -> 0 with transB=1, else 1; Conv -> 0;
                         ConvTranspose -> 1; and only those four ops take per-channel weights.
``weight-per-channel``   (only with ``require_per_channel_weights``) weights must be per channel.
``q-dq-pair``            an int8 Q feeding a DQ must use the same scale, zero point and axis, else
                         the pair is not an identity and TensorRT and ONNX Runtime disagree.
``supported-op``         the op must be in the default ONNX domain and parsed by TensorRT.
``opset``                the default-domain opset must be in TensorRT's supported range.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from modelpress.errors import BadInputError

log = logging.getLogger(__name__)

# ONNX-TensorRT operator matrix (TensorRT 10.15): the default-domain ops marked unsupported.
# A deny list rather than an allow list, so a newer op that TensorRT does parse is not refused
# by a stale list; every non-default domain (com.microsoft contrib ops) is refused separately.
TRT_UNSUPPORTED_OPS = frozenset(
    {
        "AffineGrid",
        "Bernoulli",
        "BitShift",
        "BitwiseAnd",
        "BitwiseNot",
        "BitwiseOr",
        "BitwiseXor",
        "CenterCropPad",
        "Col2Im",
        "Compress",
        "ConcatFromSequence",
        "ConvInteger",
        "DFT",
        "Det",
        "DynamicQuantizeLinear",
        "ImageDecoder",
        "MatMulInteger",
        "MaxRoiPool",
        "MaxUnpool",
        "MelWeightMatrix",
        "Multinomial",
        "NegativeLogLikelihoodLoss",
        "Optional",
        "OptionalGetElement",
        "OptionalHasElement",
        "QLinearConv",
        "QLinearMatMul",
        "RegexFullMatch",
        "SequenceAt",
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceErase",
        "SequenceInsert",
        "SequenceLength",
        "SequenceMap",
        "SoftmaxCrossEntropyLoss",
        "SplitToSequence",
        "StringConcat",
        "StringNormalizer",
        "StringSplit",
        "TfIdfVectorizer",
        "Unique",
    }
)
TRT_OPSET_RANGE = (9, 24)  # inclusive, default ONNX domain
_DEFAULT_DOMAINS = ("", "ai.onnx")
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
MODEL_NODE = "(model)"  # node name used for whole-model violations


@dataclasses.dataclass(frozen=True)
class Violation:
    """One broken rule at one node."""

    node_name: str
    rule: str
    detail: str


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """The outcome of :func:`check_trt_qdq`: every violation, plus counts for the report."""

    violations: tuple[Violation, ...]
    n_nodes: int
    n_quantize: int
    n_dequantize: int
    n_weight_dequantize: int  # DQ nodes whose data is a constant weight (directly or via Q)
    n_per_channel: int  # Q/DQ nodes with per-channel scales

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def offending_nodes(self) -> tuple[str, ...]:
        """Names of the nodes with at least one violation, in graph order, once each."""
        return tuple(dict.fromkeys(v.node_name for v in self.violations))


@dataclasses.dataclass(frozen=True)
class _Graph:
    """What the rules need to know about the top-level graph, computed once."""

    constants: Mapping[str, np.ndarray]  # initializers and Constant-node outputs
    producers: Mapping[str, onnx.NodeProto]  # tensor name -> node that writes it
    consumers: Mapping[str, tuple[tuple[onnx.NodeProto, int], ...]]  # tensor -> (node, input idx)
    names: Mapping[int, str]  # id(node) -> name used in reports


def check_trt_qdq(model: onnx.ModelProto | str | Path, *, require_per_channel_weights: bool = False) -> CheckReport:
    """Check a Q/DQ model against TensorRT's explicit-quantization rules (see module docstring).

    ``model`` is a loaded model or a path (external data is loaded too, since weights are checked).
    ``require_per_channel_weights`` also fails per-tensor weight DQs (the ``tensorrt`` preset
    promises per-channel weights; TensorRT itself accepts per-tensor ones).
    """
    proto = _load(model)
    graph = _index(proto.graph)
    violations: list[Violation] = list(_check_opset(proto))
    n_q = n_dq = n_weight = n_per_channel = 0
    for node in proto.graph.node:
        name = graph.names[id(node)]
        violations.extend(_check_supported(node, name))
        if node.op_type not in _QDQ_OPS or node.domain not in _DEFAULT_DOMAINS:
            continue
        n_q += node.op_type == "QuantizeLinear"
        n_dq += node.op_type == "DequantizeLinear"
        scale = graph.constants.get(node.input[1]) if len(node.input) > 1 else None
        if scale is not None and scale.size > 1:
            n_per_channel += 1
        is_weight = _is_weight_path(node, graph)
        if node.op_type == "DequantizeLinear" and is_weight:
            n_weight += 1
        violations.extend(_check_params(node, name, graph))
        violations.extend(
            _check_granularity(node, name, graph, is_weight=is_weight, require_per_channel=require_per_channel_weights)
        )
        if node.op_type == "DequantizeLinear":
            violations.extend(_check_pair(node, name, graph))
    return CheckReport(
        violations=tuple(violations),
        n_nodes=len(proto.graph.node),
        n_quantize=n_q,
        n_dequantize=n_dq,
        n_weight_dequantize=n_weight,
        n_per_channel=n_per_channel,
    )


def format_report(report: CheckReport, *, source: str = "model") -> str:
    """A human-readable report: one summary line, then one ``-[x]`` line per violation."""
    counts = (
        f"{report.n_quantize} Q, {report.n_dequantize} DQ "
        f"({report.n_weight_dequantize} on weights), {report.n_per_channel} per-channel"
    )
    if report.ok:
        return f"-[✓] {source}: meets TensorRT's explicit-quantization rules ({counts})"
    lines = [
        f"-[x] {source}: {len(report.violations)} TensorRT explicit-quantization violation(s) "
        f"in {len(report.offending_nodes)} node(s) ({counts})"
    ]
    lines += [f"    -[x] {v.node_name}: {v.rule}: {v.detail}" for v in report.violations]
    return "\n".join(lines)


def require_trt_compatible(
    model: onnx.ModelProto | str | Path,
    *,
    require_per_channel_weights: bool = False,
    source: str | None = None,
) -> CheckReport:
    """:func:`check_trt_qdq`, raising :class:`BadInputError` (one line) when the model fails.

    The full per-node report is logged at ERROR level before raising. This is what the engine
    stage calls, and what a quantizer test can call on the ``tensorrt`` preset's output.
    """
    label = source or (str(model) if isinstance(model, (str, Path)) else "model")
    report = check_trt_qdq(model, require_per_channel_weights=require_per_channel_weights)
    if report.ok:
        return report
    log.error("%s", format_report(report, source=label))
    first = report.violations[0]
    raise BadInputError(
        f"{label}: not buildable as a TensorRT int8 engine: {len(report.violations)} violation(s) "
        f"in {len(report.offending_nodes)} node(s), first: {first.node_name}: {first.rule}: "
        f"{first.detail} (quantize with the 'tensorrt' preset: symmetric int8, zero point 0)"
    )


# --- loading and indexing -------------------------------------------------------------------


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise BadInputError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path))
    except (DecodeError, OSError, ValueError) as exc:
        raise BadInputError(f"{path}: not a readable ONNX model ({exc})") from None


def _index(graph: onnx.GraphProto) -> _Graph:
    constants: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers: dict[str, onnx.NodeProto] = {}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    names: dict[int, str] = {}
    for index, node in enumerate(graph.node):
        # unnamed nodes are legal ONNX; the report still has to point at one
        names[id(node)] = node.name or f"{node.op_type}#{index}"
        for out in node.output:
            producers[out] = node
        for i, inp in enumerate(node.input):
            if inp:
                consumers.setdefault(inp, []).append((node, i))
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            value = _constant_value(node)
            if value is not None:
                constants[node.output[0]] = value
    return _Graph(
        constants=constants, producers=producers, consumers={k: tuple(v) for k, v in consumers.items()}, names=names
    )


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None  # sparse / string constants: never a Q/DQ parameter we can use


def _attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


# --- rules ----------------------------------------------------------------------------------


def _check_opset(proto: onnx.ModelProto) -> Iterable[Violation]:
    low, high = TRT_OPSET_RANGE
    for opset in proto.opset_import:
        if opset.domain in _DEFAULT_DOMAINS and not low <= opset.version <= high:
            yield Violation(
                MODEL_NODE, "opset", f"default-domain opset {opset.version} is outside TensorRT's {low}..{high}"
            )


def _check_supported(node: onnx.NodeProto, name: str) -> Iterable[Violation]:
    if node.domain not in _DEFAULT_DOMAINS:
        yield Violation(
            name,
            "supported-op",
            f"{node.domain}::{node.op_type} is not an ONNX op TensorRT parses "
            "(contrib ops come from ONNX Runtime graph optimizations)",
        )
    elif node.op_type in TRT_UNSUPPORTED_OPS:
        yield Violation(name, "supported-op", f"{node.op_type} is not supported by TensorRT's ONNX parser")


def _quant_dtype(node: onnx.NodeProto, graph: _Graph) -> np.dtype | None:
    """The integer type on the quantized side of a Q/DQ node (None when it cannot be known)."""
    if len(node.input) > 2 and node.input[2] in graph.constants:
        return graph.constants[node.input[2]].dtype
    if node.op_type == "QuantizeLinear":
        output_dtype = _attr_int(node, "output_dtype", 0)  # opset >= 21
        if output_dtype:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(output_dtype))
        return np.dtype(np.uint8)  # ONNX: no zero point and no output_dtype means uint8
    data = node.input[0]
    if data in graph.constants:
        return graph.constants[data].dtype
    producer = graph.producers.get(data)
    if producer is not None and producer.op_type == "QuantizeLinear":
        return _quant_dtype(producer, graph)
    return None


def _check_params(node: onnx.NodeProto, name: str, graph: _Graph) -> Iterable[Violation]:
    scale_name = node.input[1] if len(node.input) > 1 else ""
    zp_name = node.input[2] if len(node.input) > 2 else ""
    if scale_name not in graph.constants:
        yield Violation(
            name, "constant-params", f"scale '{scale_name}' is computed at run time; TensorRT needs an initializer"
        )
    else:
        scale = graph.constants[scale_name].astype(np.float64)
        if not np.all(np.isfinite(scale)):
            yield Violation(name, "scale", f"scale '{scale_name}' holds NaN or infinity")
        elif not np.all(scale > 0):
            yield Violation(name, "scale", f"scale '{scale_name}' has values <= 0 (min {scale.min():g})")
    if zp_name and zp_name not in graph.constants:
        yield Violation(
            name, "constant-params", f"zero point '{zp_name}' is computed at run time; TensorRT needs an initializer"
        )
    dtype = _quant_dtype(node, graph)
    if dtype is not None and dtype != np.int8:
        why = " (no zero point: ONNX defaults to uint8)" if not zp_name and dtype == np.uint8 else ""
        yield Violation(name, "int8", f"quantized type is {dtype}{why}; TensorRT's int8 path needs int8")
    if zp_name in graph.constants:
        zero_point = graph.constants[zp_name]
        if np.any(zero_point != 0):
            nonzero = zero_point[zero_point != 0].ravel()
            yield Violation(
                name,
                "zero-point",
                f"zero point '{zp_name}' is {nonzero[0]} (not 0): asymmetric quantization; "
                "TensorRT only supports symmetric",
            )


def _is_weight_path(node: onnx.NodeProto, graph: _Graph) -> bool:
    """True when the node's data is a constant, directly or through a QuantizeLinear."""
    data = node.input[0]
    if data in graph.constants:
        return True
    producer = graph.producers.get(data)
    return (
        node.op_type == "DequantizeLinear"
        and producer is not None
        and producer.op_type == "QuantizeLinear"
        and producer.input[0] in graph.constants
    )


def _expected_weight_axis(consumer: onnx.NodeProto, index: int, rank: int) -> int | None:
    """Output-channel axis of a weight feeding ``consumer`` at input ``index``; None: no per-channel."""
    if consumer.op_type == "MatMul" and index == 1 and rank >= 2:
        return rank - 1  # B is [..., K, N]; N output channels
    if consumer.op_type == "Gemm" and index == 1 and rank == 2:
        return 0 if _attr_int(consumer, "transB", 0) else 1  # B is [N, K] when transposed
    if consumer.op_type == "Conv" and index == 1:
        return 0  # W is [M, C/group, k...]
    if consumer.op_type == "ConvTranspose" and index == 1:
        return 1  # W is [C, M/group, k...]; M output channels
    return None


def _weight_shape(node: onnx.NodeProto, graph: _Graph) -> tuple[int, ...]:
    data = node.input[0]
    if data in graph.constants:
        return graph.constants[data].shape
    return graph.constants[graph.producers[data].input[0]].shape  # DQ of Q(constant)


def _check_granularity(
    node: onnx.NodeProto, name: str, graph: _Graph, *, is_weight: bool, require_per_channel: bool
) -> Iterable[Violation]:
    scale = graph.constants.get(node.input[1]) if len(node.input) > 1 else None
    if scale is None:
        return  # already reported by constant-params
    if scale.ndim > 1:
        yield Violation(
            name,
            "weight-axis" if is_weight else "activation-per-tensor",
            f"block-wise scale of shape {list(scale.shape)}: TensorRT only block-quantizes int4",
        )
        return
    per_channel = scale.size > 1
    if not is_weight:
        if per_channel:
            yield Violation(
                name,
                "activation-per-tensor",
                f"activation has {scale.size} per-channel scales; TensorRT quantizes activations per tensor only",
            )
        return
    if node.op_type == "QuantizeLinear":
        return  # weight axis is judged on the DQ that feeds the op; q-dq-pair ties the Q to it
    shape = _weight_shape(node, graph)
    if not per_channel:
        # only weights of ops that take per-channel scales can be asked for them (not e.g. a
        # Gather embedding table or a LayerNormalization gamma)
        takes_per_channel = [
            _expected_weight_axis(c, i, len(shape)) is not None for c, i in graph.consumers.get(node.output[0], ())
        ]
        if require_per_channel and takes_per_channel and all(takes_per_channel):
            yield Violation(
                name, "weight-per-channel", "weight is quantized per tensor; the tensorrt preset requires per-channel"
            )
        return
    axis = _attr_int(node, "axis", 1)
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis < len(shape) or shape[axis] != scale.size:
        yield Violation(
            name, "weight-axis", f"{scale.size} scales do not match axis {axis} of weight shape {list(shape)}"
        )
        return
    for consumer, index in graph.consumers.get(node.output[0], ()):
        expected = _expected_weight_axis(consumer, index, len(shape))
        consumer_name = graph.names[id(consumer)]
        if expected is None:
            yield Violation(
                name,
                "weight-axis",
                f"per-channel weight feeds {consumer.op_type} '{consumer_name}' input "
                f"{index}; TensorRT takes per-channel weights only for "
                "Conv/ConvTranspose/Gemm/MatMul weights",
            )
        elif axis != expected:
            yield Violation(
                name,
                "weight-axis",
                f"per-channel axis {axis} is not the output-channel axis {expected} of "
                f"{consumer.op_type} '{consumer_name}' (weight shape {list(shape)})",
            )


def _check_pair(node: onnx.NodeProto, name: str, graph: _Graph) -> Iterable[Violation]:
    producer = graph.producers.get(node.input[0])
    if producer is None or producer.op_type != "QuantizeLinear":
        return
    if _quant_dtype(producer, graph) != np.int8:
        return  # the int8 rule already fails it; comparing its scales would add noise
    q_name = graph.names[id(producer)]
    q_scale, dq_scale = graph.constants.get(producer.input[1]), graph.constants.get(node.input[1])
    if q_scale is not None and dq_scale is not None and not _same(q_scale, dq_scale):
        yield Violation(
            name, "q-dq-pair", f"scale differs from its QuantizeLinear '{q_name}'; the pair is not an identity"
        )
    q_zp, dq_zp = _zero_point(producer, graph), _zero_point(node, graph)
    if q_zp is not None and dq_zp is not None and not _same(q_zp, dq_zp):
        yield Violation(
            name, "q-dq-pair", f"zero point differs from its QuantizeLinear '{q_name}'; the pair is not an identity"
        )
    q_scale = graph.constants.get(producer.input[1])
    if q_scale is not None and q_scale.size > 1 and _attr_int(producer, "axis", 1) != _attr_int(node, "axis", 1):
        yield Violation(name, "q-dq-pair", f"axis differs from its QuantizeLinear '{q_name}'")


def _zero_point(node: onnx.NodeProto, graph: _Graph) -> np.ndarray | None:
    """The zero point's values; an omitted one is 0 (shaped like the scale). None: not constant."""
    if len(node.input) > 2 and node.input[2]:
        return graph.constants.get(node.input[2])
    scale = graph.constants.get(node.input[1])
    return None if scale is None else np.zeros(scale.shape, dtype=np.int64)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal values; a scalar and a one-element vector count as the same per-tensor parameter."""
    if a.size == 1 and b.size == 1:
        return bool(a.astype(np.float64).ravel()[0] == b.astype(np.float64).ravel()[0])
    return a.shape == b.shape and bool(np.array_equal(a.astype(np.float64), b.astype(np.float64)))
