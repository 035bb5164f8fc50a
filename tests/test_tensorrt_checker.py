"""TensorRT explicit-quantization checker: small Q/DQ graphs built in code, and real ORT output.

Each hand-built graph is x -> Q -> DQ -> MatMul/Gemm/Conv <- DQ <- int8 weight, varied one rule at
a time, and the test asserts exactly which nodes are named. Then ONNX Runtime's default
(asymmetric) ``quantize_static`` output must fail and a TensorRT-style quantization must pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelpress.errors import BadInputError
from modelpress.runtimes.tensorrt.checker import (
    MODEL_NODE,
    check_trt_qdq,
    format_report,
    require_trt_compatible,
)

K, N = 4, 3  # MatMul weight [K, N]


def _tensor(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _model(nodes, initializers, *, inputs=None, y_rank: int = 2, opset: int = 20, extra_opsets=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{i}" for i in range(y_rank)])],
        initializer=initializers,
    )
    opsets = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, v) for d, v in extra_opsets]]
    model = helper.make_model(graph, opset_imports=opsets)
    onnx.checker.check_model(model)
    return model


def qdq_matmul(
    *,
    act_type=np.int8,
    act_zp=0,
    act_scale=0.05,
    dq_scale=None,
    w_axis=1,
    w_scales=None,
    w_zp=None,
    op="MatMul",
    trans_b=0,
) -> onnx.ModelProto:
    """x -Q/DQ-> MatMul|Gemm with a per-channel int8 weight DQ. Every knob defaults to compliant."""
    w_shape = (N, K) if trans_b else (K, N)
    channels = w_shape[w_axis] if w_scales is None else len(w_scales)
    w_scales = np.full(channels, 0.01, np.float32) if w_scales is None else np.asarray(w_scales, np.float32)
    w_zp = np.zeros(channels, np.int8) if w_zp is None else np.asarray(w_zp, np.int8)
    inits = [
        _tensor("x_scale", np.float32(act_scale)),
        _tensor("x_zp", np.asarray(act_zp, act_type)),
        _tensor("x_dq_scale", np.float32(act_scale if dq_scale is None else dq_scale)),
        _tensor("W_q", np.ones(w_shape, np.int8)),
        _tensor("W_scale", w_scales),
        _tensor("W_zp", w_zp),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="x_Q"),
        helper.make_node("DequantizeLinear", ["x_q", "x_dq_scale", "x_zp"], ["x_dq"], name="x_DQ"),
        helper.make_node("DequantizeLinear", ["W_q", "W_scale", "W_zp"], ["W"], name="W_DQ", axis=w_axis),
    ]
    if op == "MatMul":
        nodes.append(helper.make_node("MatMul", ["x_dq", "W"], ["y"], name="matmul"))
    else:
        nodes.append(helper.make_node("Gemm", ["x_dq", "W"], ["y"], name="gemm", transB=trans_b))
    return _model(nodes, inits)


def _names(report) -> set[str]:
    return set(report.offending_nodes)


def _rules(report, node: str) -> set[str]:
    return {v.rule for v in report.violations if v.node_name == node}


# --- hand-built graphs -----------------------------------------------------------------------


def test_compliant_matmul_passes_with_counts():
    report = check_trt_qdq(qdq_matmul(), require_per_channel_weights=True)
    assert report.ok, format_report(report)
    assert (report.n_quantize, report.n_dequantize, report.n_weight_dequantize, report.n_per_channel) == (1, 2, 1, 1)
    assert format_report(report, source="m.onnx").startswith("-[✓] m.onnx")


def test_uint8_activations_fail_at_both_q_and_dq():
    report = check_trt_qdq(qdq_matmul(act_type=np.uint8, act_zp=0))
    assert _names(report) == {"x_Q", "x_DQ"}
    assert _rules(report, "x_Q") == {"int8"}


def test_nonzero_zero_point_fails():
    report = check_trt_qdq(qdq_matmul(act_zp=3))
    assert _names(report) == {"x_Q", "x_DQ"}
    assert _rules(report, "x_DQ") == {"zero-point"}


def test_weight_zero_point_must_be_zero():
    report = check_trt_qdq(qdq_matmul(w_zp=[0, 1, 0]))
    assert _names(report) == {"W_DQ"}
    assert _rules(report, "W_DQ") == {"zero-point"}


def test_matmul_weight_axis_must_be_output_channels():
    # [K, N] = [4, 3]: axis 1 (N) is right; axis 0 (K) is per-input-channel and wrong
    report = check_trt_qdq(qdq_matmul(w_axis=0))
    assert _names(report) == {"W_DQ"}
    assert _rules(report, "W_DQ") == {"weight-axis"}
    assert "output-channel axis 1" in report.violations[0].detail


@pytest.mark.parametrize(("trans_b", "axis", "ok"), [(1, 0, True), (1, 1, False), (0, 1, True), (0, 0, False)])
def test_gemm_weight_axis_follows_transb(trans_b, axis, ok):
    report = check_trt_qdq(qdq_matmul(op="Gemm", trans_b=trans_b, w_axis=axis))
    assert report.ok is ok
    assert _names(report) == (set() if ok else {"W_DQ"})


@pytest.mark.parametrize(("axis", "ok"), [(0, True), (1, False)])
def test_conv_weight_axis_is_zero(axis, ok):
    w = np.ones((8, 2, 3, 3), np.int8)  # [M, C, kH, kW]
    inits = [
        _tensor("x_scale", np.float32(0.1)),
        _tensor("x_zp", np.int8(0)),
        _tensor("W_q", w),
        _tensor("W_scale", np.full(w.shape[axis], 0.01, np.float32)),
        _tensor("W_zp", np.zeros(w.shape[axis], np.int8)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="x_Q"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="x_DQ"),
        helper.make_node("DequantizeLinear", ["W_q", "W_scale", "W_zp"], ["W"], name="W_DQ", axis=axis),
        helper.make_node("Conv", ["x_dq", "W"], ["y"], name="conv"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])
    report = check_trt_qdq(_model(nodes, inits, inputs=[x], y_rank=4))
    assert _names(report) == (set() if ok else {"W_DQ"})


@pytest.mark.parametrize("bad_scale", [-0.05, 0.0, np.inf, np.nan])
def test_scale_must_be_positive_and_finite(bad_scale):
    report = check_trt_qdq(qdq_matmul(act_scale=bad_scale))
    assert _names(report) == {"x_Q", "x_DQ"}
    assert _rules(report, "x_Q") == {"scale"}


def test_negative_per_channel_weight_scale_is_named():
    report = check_trt_qdq(qdq_matmul(w_scales=[0.01, -0.01, 0.01]))
    assert _names(report) == {"W_DQ"}
    assert _rules(report, "W_DQ") == {"scale"}


def test_scale_from_a_graph_input_is_not_constant():
    model = qdq_matmul()
    model.graph.input.append(helper.make_tensor_value_info("runtime_scale", TensorProto.FLOAT, []))
    model.graph.node[0].input[1] = "runtime_scale"  # x_Q's scale now arrives at run time
    report = check_trt_qdq(model)
    assert "constant-params" in _rules(report, "x_Q")
    assert _names(report) == {"x_Q"}


def test_scale_from_constant_node_is_accepted():
    model = qdq_matmul()
    const = helper.make_node(
        "Constant", [], ["x_scale_c"], name="scale_const", value=numpy_helper.from_array(np.float32(0.05))
    )
    model.graph.node.insert(0, const)
    model.graph.node[1].input[1] = "x_scale_c"
    assert check_trt_qdq(model).ok


def test_q_dq_pair_with_different_scales_is_named_at_the_dq():
    report = check_trt_qdq(qdq_matmul(act_scale=0.05, dq_scale=0.07))
    assert _names(report) == {"x_DQ"}
    assert _rules(report, "x_DQ") == {"q-dq-pair"}


def test_per_channel_activation_is_refused():
    model = qdq_matmul()
    scale = next(t for t in model.graph.initializer if t.name == "x_scale")
    zp = next(t for t in model.graph.initializer if t.name == "x_zp")
    scale.CopyFrom(_tensor("x_scale", np.full(K, 0.05, np.float32)))
    zp.CopyFrom(_tensor("x_zp", np.zeros(K, np.int8)))
    for node in model.graph.node[:2]:
        node.attribute.append(helper.make_attribute("axis", 1))
    model.graph.node[1].input[1] = "x_scale"  # DQ shares the (now per-channel) scale
    report = check_trt_qdq(model)
    assert _names(report) == {"x_Q", "x_DQ"}
    assert _rules(report, "x_Q") == {"activation-per-tensor"}


def test_per_tensor_weight_passes_unless_per_channel_is_required():
    model = qdq_matmul(w_scales=[0.01], w_zp=[0])
    assert check_trt_qdq(model).ok
    strict = check_trt_qdq(model, require_per_channel_weights=True)
    assert _names(strict) == {"W_DQ"}
    assert _rules(strict, "W_DQ") == {"weight-per-channel"}


def test_missing_zero_point_means_uint8():
    model = qdq_matmul()
    for node in model.graph.node[:2]:
        del node.input[2]
    report = check_trt_qdq(model)
    assert _names(report) == {"x_Q", "x_DQ"}
    assert "defaults to uint8" in report.violations[0].detail


def test_unsupported_and_contrib_ops_are_named():
    nodes = [
        helper.make_node("MatMulInteger", ["a", "b"], ["y"], name="mmi"),
        helper.make_node("FusedMatMul", ["a", "b"], ["z"], name="fused", domain="com.microsoft"),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT8, [2, 2]) for n in ("a", "b")]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.INT32, [2, 2])])
    opsets = [helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    report = check_trt_qdq(model)
    assert _names(report) == {"mmi", "fused"}
    assert {v.rule for v in report.violations} == {"supported-op"}


def test_opset_outside_tensorrt_range_is_a_model_violation():
    report = check_trt_qdq(_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [], opset=25))
    assert _names(report) == {MODEL_NODE}


def test_path_input_and_bad_files(tmp_path: Path):
    good = tmp_path / "m.onnx"
    onnx.save(qdq_matmul(act_zp=5), str(good))
    assert _names(check_trt_qdq(good)) == {"x_Q", "x_DQ"}
    with pytest.raises(BadInputError, match="no such ONNX file"):
        check_trt_qdq(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\x00 not a protobuf \xff" * 10)
    with pytest.raises(BadInputError, match="garbage.onnx: not a readable ONNX model"):
        check_trt_qdq(garbage)


def test_require_trt_compatible_raises_one_line_naming_file_and_node(tmp_path: Path):
    path = tmp_path / "model.int8.onnx"
    onnx.save(qdq_matmul(act_zp=5), str(path))
    with pytest.raises(BadInputError) as info:
        require_trt_compatible(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "x_Q" in message and "zero-point" in message
    assert require_trt_compatible(qdq_matmul()).ok


# --- real ONNX Runtime quantizer output ------------------------------------------------------


class _Reader:
    """A CalibrationDataReader over fixed batches (duck-typed: ORT only calls get_next)."""

    def __init__(self, batches):
        self._it = iter(batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # some ORT versions rewind between calibration passes
        pass


def _float_matmul(path: Path) -> None:
    # positive weights: with positive inputs, y is all-positive too (asymmetric range [0, max])
    w = np.abs(np.random.default_rng(0).standard_normal((K, N))).astype(np.float32) + 0.1
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")]
    onnx.save(_model(nodes, [_tensor("W", w)]), str(path))


def test_ort_default_quantize_static_fails_at_the_activation_qdq_pairs(tmp_path: Path):
    from onnxruntime.quantization import quantize_static

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    _float_matmul(src)
    # all-positive activations: an asymmetric range [0, max] gets zero point -128
    rng = np.random.default_rng(1)
    batches = [{"x": rng.uniform(0.1, 1.0, (2, K)).astype(np.float32)} for _ in range(4)]
    quantize_static(str(src), str(dst), _Reader(batches))
    report = check_trt_qdq(dst)
    # the weight DQ (symmetric int8, zero point 0 by default) is fine; the activation pairs on the
    # input and on the graph output are not
    assert _names(report) == {"x_QuantizeLinear", "x_DequantizeLinear", "y_QuantizeLinear", "y_DequantizeLinear"}
    assert _rules(report, "x_QuantizeLinear") == {"zero-point"}
    assert "W_DequantizeLinear" in {n.name for n in onnx.load(str(dst)).graph.node}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A random 1-layer BertModel exported with dynamic batch x sequence (a few seconds on CPU)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 64, (2, 8))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    program = torch.onnx.export(
        model,
        (ids, torch.ones_like(ids)),
        dynamo=True,
        input_names=["input_ids", "attention_mask"],
        dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
    )
    path = tmp_path_factory.mktemp("bert") / "model.onnx"
    program.save(str(path))
    return path


def _bert_batches():
    rng = np.random.default_rng(2)
    return [
        {"input_ids": rng.integers(0, 64, (2, 8)).astype(np.int64), "attention_mask": np.ones((2, 8), np.int64)}
        for _ in range(4)
    ]


def test_ort_default_quantized_bert_fails_on_asymmetric_and_int32_nodes(tiny_bert: Path, tmp_path: Path):
    from onnxruntime.quantization import quantize_static

    out = tmp_path / "model.int8.onnx"
    quantize_static(str(tiny_bert), str(out), _Reader(_bert_batches()))
    report = check_trt_qdq(out)
    assert not report.ok
    model = onnx.load(str(out))
    qdq = {n.name for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert set(report.offending_nodes) <= qdq  # nothing else in a BERT graph breaks a rule
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zp = inits[node.input[2]]
        data = inits.get(node.input[0])
        broken = bool(np.any(zp != 0)) or zp.dtype != np.int8
        # every asymmetric or non-int8 (int32 bias) node is named, and no compliant one is
        assert (node.name in report.offending_nodes) is broken, node.name
        if data is not None and data.dtype == np.int32:
            assert "int8" in _rules(report, node.name)


def test_tensorrt_style_quantized_bert_passes(tiny_bert: Path, tmp_path: Path):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    out = tmp_path / "model.int8.onnx"
    quantize_static(
        str(tiny_bert),
        str(out),
        _Reader(_bert_batches()),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm"],
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )
    report = require_trt_compatible(out, require_per_channel_weights=True)
    assert report.n_per_channel == report.n_weight_dequantize > 0
