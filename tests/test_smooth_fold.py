"""SmoothQuant's division folded into the producer (quantize.smooth_fold): exact where it folds,
a ``Mul`` where it cannot (a LayerNorm that also feeds a residual, a GELU output)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelpress.export.fusion import fuse_exported
from modelpress.quantize import smoothquant
from modelpress.quantize.targets import find_targets


def _run(model: onnx.ModelProto, feed) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _unfolded(model, targets, absmax, alpha, **kw):
    """The smoothing as it was before folds: one ``Mul`` per activation (the reference)."""
    with mock.patch.object(smoothquant, "fold_division", lambda *a: False):
        return smoothquant.apply_smoothing(model, targets, absmax, alpha, **kw)


def _muls(model) -> int:
    return sum(n.op_type == "Mul" for n in model.graph.node)


def _random_absmax(model, targets, seed=0):
    rng = np.random.default_rng(seed)
    rows = {i.name: i.dims[0] for i in model.graph.initializer if i.dims}
    return {t.activation: rng.uniform(0.01, 30.0, size=rows[t.weight]) for t in targets}


def _bert_feed(names, rows=3, length=16):
    rng = np.random.default_rng(3)
    feed = {
        "input_ids": rng.integers(5, 90, (rows, length)),
        "attention_mask": np.ones((rows, length), np.int64),
        "token_type_ids": np.zeros((rows, length), np.int64),
    }
    feed["attention_mask"][0, length // 2 :] = 0  # padding, so the mask path is exercised
    return {k: v for k, v in feed.items() if k in names}


def _assert_close(got, ref):
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max()))


def test_the_tiny_bert_context_division_goes_into_v(bert_onnx):
    """Post-LN BERT: the 2 attention contexts fold into V's columns and bias; the LayerNorm outputs
    (read by the residual too) and the GELU outputs keep their Mul; the output is unchanged."""
    model = onnx.load(str(bert_onnx.onnx_path))
    targets = find_targets(model)
    absmax = _random_absmax(model, targets)
    folded, new_targets, factors = smoothquant.apply_smoothing(model, targets, absmax, 0.5)
    plain, plain_targets, plain_factors = _unfolded(model, targets, absmax, 0.5)
    onnx.checker.check_model(folded)
    assert _muls(plain) - _muls(folded) == 2 and _muls(plain) == _muls(model) + 8
    assert new_targets == plain_targets  # the same activations (named *_smoothed) and weights
    assert factors.keys() == plain_factors.keys()
    assert all(np.array_equal(factors[k], plain_factors[k]) for k in factors)  # the factors of the unfolded graph
    kept = {n.input[0] for n in folded.graph.node if n.name.endswith("_smooth_mul")}
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert sorted(producers[a] for a in kept) == ["LayerNormalization"] * 4 + ["Mul"] * 2  # 2 LN per layer, GELU
    names = [i.name for i in model.graph.input]
    feed = _bert_feed(names)
    _assert_close(_run(folded, feed), _run(plain, feed))
    _assert_close(_run(folded, feed), _run(model, feed))


def test_the_fused_attention_takes_the_division_in_its_v_third(bert_onnx):
    """ORT's fused graph: each ``Attention`` output (the context) folds into the packed weight's and
    bias's last third; the graph computes what the unfolded one does."""
    names = [i.name for i in onnx.load(str(bert_onnx.onnx_path), load_external_data=False).graph.input]
    feed = _bert_feed(names)
    fused = fuse_exported(bert_onnx.onnx_path, feed)
    if fused is None:
        pytest.skip("the tiny export carries no fusion metadata")
    targets = find_targets(fused, op_types=("MatMul", "Gemm", "Attention"))
    assert sum(t.op_type == "Attention" for t in targets) == 2
    factors = {a: s.astype(np.float32) for a, s in _random_absmax(fused, targets, seed=1).items()}
    folded, _, _ = smoothquant.apply_smoothing(fused, targets, {}, 0.0, factors_by_act=factors)
    plain, _, _ = _unfolded(fused, targets, {}, 0.0, factors_by_act=factors)
    assert _muls(plain) - _muls(folded) == 2
    _assert_close(_run(folded, feed), _run(plain, feed))


def _pre_ln_model(*, residual_reads_norm: bool, rms: bool = False) -> onnx.ModelProto:
    """x → LayerNorm (or x·w, a decomposed RMSNorm's weight) → MatMul q, MatMul k; out = q + k (+ the norm)."""
    rng = np.random.default_rng(5)
    c = 6
    inits = [
        numpy_helper.from_array(rng.normal(size=c).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.normal(size=c).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.normal(size=(c, c)).astype(np.float32), "Wq"),
        numpy_helper.from_array(rng.normal(size=(c, c)).astype(np.float32), "Wk"),
    ]
    norm = (
        helper.make_node("Mul", ["x", "gamma"], ["h"], name="rms_weight")
        if rms
        else helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1)
    )
    nodes = [
        norm,
        helper.make_node("MatMul", ["h", "Wq"], ["q"], name="mm_q"),
        helper.make_node("MatMul", ["h", "Wk"], ["k"], name="mm_k"),
        helper.make_node("Add", ["q", "k"], ["qk"], name="sum"),
        helper.make_node("Add", ["qk", "h" if residual_reads_norm else "x"], ["out"], name="residual"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, c])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, c])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("rms", [False, True])
def test_a_norm_read_only_by_its_projections_takes_the_division(rms):
    model = _pre_ln_model(residual_reads_norm=False, rms=rms)
    targets = find_targets(model)
    absmax = {"h": np.array([0.1, 40.0, 1.0, 3.0, 0.5, 9.0])}
    folded, new_targets, _ = smoothquant.apply_smoothing(model, targets, absmax, 0.8)
    onnx.checker.check_model(folded)
    assert _muls(folded) == _muls(model)  # no Mul added: gamma (and beta) took 1/s
    assert {t.activation for t in new_targets} == {"h_smoothed"}
    x = (np.random.default_rng(6).normal(size=(16, 6)) * 3).astype(np.float32)
    _assert_close(_run(folded, {"x": x}), _run(model, {"x": x}))


def test_a_norm_the_residual_reads_keeps_its_mul():
    """Post-LN: the residual needs the LayerNorm's own output, so dividing gamma would change it."""
    model = _pre_ln_model(residual_reads_norm=True)
    targets = find_targets(model)
    folded, _, _ = smoothquant.apply_smoothing(model, targets, {"h": np.linspace(0.1, 30, 6)}, 0.8)
    assert _muls(folded) == _muls(model) + 1
    assert numpy_helper.to_array(next(i for i in folded.graph.initializer if i.name == "gamma")).tolist() == [
        float(v) for v in numpy_helper.to_array(model.graph.initializer[0])
    ]
    x = np.random.default_rng(7).normal(size=(8, 6)).astype(np.float32)
    _assert_close(_run(folded, {"x": x}), _run(model, {"x": x}))


def test_the_profile_tool_times_the_models_own_int8_gemms(bert_onnx, data_files, tmp_path):
    """tools/int8_profile.py's denominator: one MatMulIntegerToFloat per int8 GEMM of the model (each
    QAttention's packed Q/K/V weight as one), computing (x − zp)·x_scale · W·w_scale + bias."""
    import importlib.util
    from pathlib import Path

    import onnxruntime as ort
    from transformers import AutoTokenizer

    from modelpress.calibration_data.feeds import TokenizedFeed
    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.static import quantize_static

    spec = importlib.util.spec_from_file_location(
        "int8_profile", Path(__file__).parents[1] / "tools" / "int8_profile.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tokenizer = AutoTokenizer.from_pretrained(str(bert_onnx.model.path))
    names = bert_onnx.result.input_names
    cal = TokenizedFeed(data_files.calibration_texts, tokenizer, batch_size=16, max_length=32, input_names=names)
    out = tmp_path / "m.int8.onnx"
    quantize_static(bert_onnx.onnx_path, out, cal, QuantizeConfig(format="ort"))
    model = onnx.load(str(out))
    int8 = [n for n in model.graph.node if n.op_type in ("MatMulIntegerToFloat", "QAttention")]
    gemms = tool.gemm_only(model, rows=8)
    assert [n.name for n in gemms.graph.node] == [n.name for n in int8] and len(int8) >= 8
    rng = np.random.default_rng(0)
    feed = {
        i.name: rng.integers(0, 256, (8, i.type.tensor_type.shape.dim[1].dim_value), dtype=np.uint8)
        for i in gemms.graph.input
    }
    got = dict(
        zip([o.name for o in gemms.graph.output], ort.InferenceSession(gemms.SerializeToString()).run(None, feed))
    )
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in int8:
        if node.op_type == "QAttention":
            x_s, w, bias, w_s, x_zp = node.input[3], node.input[1], node.input[2], node.input[4], node.input[6]
        else:
            bias = node.input[6] if len(node.input) > 6 else ""
            x_s, w, w_s, x_zp = node.input[2], node.input[1], node.input[3], node.input[4]
        x = feed[f"x{inits[w].shape[0]}"].astype(np.float64) - float(inits[x_zp])
        ref = (x * float(inits[x_s])) @ (inits[w].astype(np.float64) * inits[w_s]) + (inits[bias] if bias else 0.0)
        np.testing.assert_allclose(got[f"{node.name}_out"], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
