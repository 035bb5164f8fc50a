"""The quantizer's arithmetic: streaming statistics and calibration ranges, int8 weights, activation
quantization parameters, SmoothQuant's exactness (hand-built graphs and the tiny BERT export)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelpress.quantize.qdq import activation_params, quantize_weight
from modelpress.quantize.smoothquant import apply_smoothing, smoothing_factors
from modelpress.quantize.stats import TensorRange, TensorStats
from modelpress.quantize.targets import find_targets


def _feed_in_batches(stats: TensorStats, x: np.ndarray, n_batches: int) -> None:
    for block in np.array_split(x, n_batches):
        stats.update(block)


# -- TensorStats --------------------------------------------------------------------------------------
def test_minmax_is_exact_per_channel_and_per_tensor():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 7)).astype(np.float32) * np.arange(1, 8, dtype=np.float32)
    s = TensorStats()
    _feed_in_batches(s, x, 13)
    assert s.count == 5000
    np.testing.assert_array_equal(s.ch_min, x.min(axis=0))
    np.testing.assert_array_equal(s.ch_max, x.max(axis=0))
    np.testing.assert_array_equal(s.channel_absmax(), np.abs(x).max(axis=0))
    r = s.range("minmax")
    assert (r.lo, r.hi, r.clipped) == (float(x.min()), float(x.max()), 0.0)
    s.update(np.zeros((0, 7), dtype=np.float32))  # an empty block changes nothing
    assert s.count == 5000


def test_histogram_rebinning_keeps_the_total_count():
    rng = np.random.default_rng(1)
    s = TensorStats(num_bins=256, histogram=True)
    total = 0
    for k, scale in enumerate([0.01, 0.5, 0.2, 3.0, 40.0, 1.0, 1000.0]):  # the range keeps growing
        block = (rng.normal(size=(300 + k, 5)) * scale).astype(np.float32)
        s.update(block)
        total += block.size
        assert s.hist.sum() == total
        assert s.hist_amax >= np.abs(block).max()
    assert s.hist.shape == (256,)


def test_memory_is_bounded_whatever_the_number_of_rows():
    rng = np.random.default_rng(2)
    small, large = TensorStats(num_bins=512, histogram=True), TensorStats(num_bins=512, histogram=True)
    small.update(rng.normal(size=(10, 16)).astype(np.float32))
    for _ in range(20):
        large.update(rng.normal(size=(5000, 16)).astype(np.float32))
    for s in (small, large):
        assert s.hist.shape == (512,) and s.ch_min.shape == s.ch_max.shape == (16,)
    assert large.count == 100_000 and large.hist.sum() == 1_600_000
    assert TensorStats(num_bins=2047).num_bins == 2048  # even: the histogram folds around 0


def test_percentile_clips_planted_outliers_of_a_uniform_distribution():
    rng = np.random.default_rng(3)
    x = rng.uniform(-1.0, 1.0, size=(100_000, 1)).astype(np.float32)
    x[[10, 500, 7000]] = 50.0
    x[[20, 800]] = -50.0
    s = TensorStats(num_bins=2048, histogram=True)
    _feed_in_batches(s, x, 10)
    bin_width = 2 * s.hist_amax / s.num_bins
    r = s.range("percentile", percentile=99.9)
    assert abs(r.hi - 1.0) <= 2 * bin_width and abs(r.lo + 1.0) <= 2 * bin_width
    assert r.clipped == pytest.approx(1 - (r.hi - r.lo) / 100.0, abs=1e-6) and r.clipped > 0.95
    sym = s.range("percentile", percentile=99.9, symmetric=True)
    assert sym.lo == -sym.hi and abs(sym.hi - 1.0) <= 2 * bin_width
    mm = s.range("minmax")
    assert (mm.lo, mm.hi, mm.clipped) == (-50.0, 50.0, 0.0)


def test_percentile_of_a_normal_distribution_matches_numpy():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200_000, 1)).astype(np.float32)
    s = TensorStats(num_bins=2048, histogram=True)
    _feed_in_batches(s, x, 8)
    bin_width = 2 * s.hist_amax / s.num_bins
    r = s.range("percentile", percentile=99.9)  # 0.05 % cut on each side
    assert abs(r.hi - np.percentile(x, 99.95)) <= 2 * bin_width
    assert abs(r.lo - np.percentile(x, 0.05)) <= 2 * bin_width
    assert abs(r.hi - 3.29) < 0.1  # the normal quantile z(0.9995) = 3.2905


def test_entropy_clips_outliers_and_stays_inside_the_observed_range():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(50_000, 4)).astype(np.float32)
    x[0, 0], x[1, 1] = 60.0, -60.0
    s = TensorStats(num_bins=2048, histogram=True)
    _feed_in_batches(s, x, 5)
    r = s.range("entropy")
    assert -60.0 <= r.lo < 0 < r.hi <= 60.0
    assert r.hi < 30.0 and r.lo > -30.0 and r.clipped > 0.5  # the lone outliers are cut off
    assert r.hi > 2.0  # the bulk of the distribution is kept


@pytest.mark.parametrize(
    "values",
    [
        np.full((64, 3), 0.5, dtype=np.float32),  # all equal
        np.zeros((64, 3), dtype=np.float32),  # all zero
        (1.0 + np.linspace(0, 1e-9, 192)).astype(np.float32).reshape(64, 3),  # a 1e-9 range
        np.linspace(-1e-9, 1e-9, 192, dtype=np.float32).reshape(64, 3),
    ],
)
@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_narrow_ranges_do_not_crash(values, method):
    s = TensorStats(num_bins=2048, histogram=True)
    s.update(values)
    s.update(values)
    r = s.range(method, percentile=99.99)
    assert np.isfinite([r.lo, r.hi, r.clipped]).all() and r.lo <= r.hi and 0.0 <= r.clipped <= 1.0
    for symmetric in (False, True):
        p = activation_params(r, symmetric=symmetric)
        assert np.isfinite(p.scale) and p.scale > 0


@pytest.mark.parametrize("lo, hi", [(0.45, 0.5), (3.0, 4.0), (-4.0, -3.0)])
@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_offset_distributions_keep_their_bulk(lo, hi, method):
    """A distribution away from zero: the chosen range must still cover (almost) all of it."""
    x = np.random.default_rng(9).uniform(lo, hi, size=(5000, 4)).astype(np.float32)
    s = TensorStats(histogram=True)
    s.update(x)
    r = s.range(method, percentile=99.9)
    assert r.lo <= r.hi
    p = activation_params(r, symmetric=False)
    q = np.clip(np.round(x / p.scale) + p.zero_point, 0, 255)
    err = np.abs((q - p.zero_point) * p.scale - x)
    assert np.mean(err <= p.scale / 2 + 1e-6) > 0.99


def test_range_errors():
    with pytest.raises(ValueError, match="no data"):
        TensorStats().range("minmax")
    s = TensorStats(histogram=False)
    s.update(np.ones((4, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="histogram=True"):
        s.range("percentile")
    with pytest.raises(ValueError, match="unknown calibration method"):
        s.range("mse")


# -- int8 weights -----------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [1, 0])
def test_quantize_weight_round_trip_error_is_at_most_half_a_step_per_channel(axis):
    rng = np.random.default_rng(6)
    w = rng.normal(size=(48, 24)).astype(np.float32) * rng.uniform(0.01, 3.0, size=(1, 24)).astype(np.float32)
    if axis == 0:
        w = np.ascontiguousarray(w.T)  # Gemm transB layout: [out, in]
    q, scale = quantize_weight(w, axis=axis, per_channel=True)
    shape = [1, 1]
    shape[axis] = -1
    assert q.dtype == np.int8 and q.shape == w.shape and scale.shape == (w.shape[axis],)
    np.testing.assert_allclose(scale, np.abs(w).max(axis=1 - axis) / 127.0, rtol=1e-6)
    err = np.abs(q.astype(np.float32) * scale.reshape(shape) - w)
    assert (err <= scale.reshape(shape) / 2 * (1 + 1e-5)).all()
    assert (np.abs(q).max(axis=1 - axis) == 127).all() and q.min() >= -127  # symmetric, no -128


def test_quantize_weight_per_tensor_and_zero_channel():
    w = np.array([[0.0, 1.0], [0.0, -2.0]], dtype=np.float32)
    q, scale = quantize_weight(w, axis=1, per_channel=True)
    assert np.isfinite(scale).all() and q[:, 0].tolist() == [0, 0] and q[:, 1].tolist() == [64, -127]
    qt, st = quantize_weight(w, axis=1, per_channel=False)
    assert st.shape == () and float(st) == pytest.approx(2.0 / 127) and qt.tolist() == [[0, 64], [0, -127]]


# -- activation parameters --------------------------------------------------------------------------
def test_activation_params_asymmetric_and_symmetric():
    p = activation_params(TensorRange(-1.0, 3.0, 0.0), symmetric=False)
    assert (p.signed, p.zero_point) == (False, 64) and p.scale == pytest.approx(4 / 255)
    # zero is exactly representable, both ends land within the uint8 grid
    assert round(0.0 / p.scale) + p.zero_point == p.zero_point
    assert 0 <= round(-1.0 / p.scale) + p.zero_point and round(3.0 / p.scale) + p.zero_point <= 255
    pos = activation_params(TensorRange(0.5, 2.0, 0.0), symmetric=False)  # the range is widened to 0
    assert pos.zero_point == 0 and pos.scale == pytest.approx(2 / 255)
    neg = activation_params(TensorRange(-3.0, -1.0, 0.0), symmetric=False)
    assert neg.zero_point == 255 and neg.scale == pytest.approx(3 / 255)
    sym = activation_params(TensorRange(-1.0, 3.0, 0.0), symmetric=True)
    assert (sym.signed, sym.zero_point) == (True, 0) and sym.scale == pytest.approx(3 / 127)
    assert activation_params(TensorRange(-2.0, 0.5, 0.0), symmetric=True).scale == pytest.approx(2 / 127)


# -- SmoothQuant ------------------------------------------------------------------------------------
def test_smoothing_factors_by_hand():
    act = np.array([4.0, 1.0, 0.0])
    w = np.array([[0.5, -2.0], [1.0, 1.0], [3.0, 0.0]], dtype=np.float32)  # [in=3, out=2]
    s = smoothing_factors(act, [(w, 0)], alpha=0.5)
    expected = np.sqrt(np.maximum(act, 1e-5)) / np.sqrt([2.0, 1.0, 3.0])
    np.testing.assert_allclose(s, expected, rtol=1e-6)
    # weights shared by one activation: the per-row max over all of them
    s2 = smoothing_factors(act, [(w, 0), (np.full((2, 3), 5.0, dtype=np.float32), 1)], alpha=0.5)
    np.testing.assert_allclose(s2, np.sqrt(np.maximum(act, 1e-5)) / np.sqrt(5.0), rtol=1e-6)
    # alpha 1: all of the range moves into the weights (factors clipped to [1e-4, 1e4])
    np.testing.assert_allclose(smoothing_factors(act, [(w, 0)], alpha=1.0), [4.0, 1.0, 1e-4], rtol=1e-6)
    assert smoothing_factors(np.array([1e9]), [(np.array([[1e-9]]), 0)], alpha=1.0)[0] == 1e4  # clipped


def _two_matmul_model(shared_weight: bool) -> onnx.ModelProto:
    """x → MatMul(W1), MatMul(W2) (one activation, two consumers); y2 → MatMul(W1 or W3)."""
    rng = np.random.default_rng(7)
    w1 = rng.normal(size=(6, 6)).astype(np.float32)
    w2 = rng.normal(size=(6, 4)).astype(np.float32)
    w3 = w1 if shared_weight else rng.normal(size=(6, 6)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["y1"], name="mm1"),
        helper.make_node("MatMul", ["x", "W2"], ["y2"], name="mm2"),
        helper.make_node("Relu", ["y1"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "W3" if not shared_weight else "W1"], ["y3"], name="mm3"),
        helper.make_node("Add", ["x", "y3"], ["out"], name="residual"),
    ]
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")]
    if not shared_weight:
        inits.append(numpy_helper.from_array(w3, "W3"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 6])],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 6]),
            helper.make_tensor_value_info("y2", TensorProto.FLOAT, [None, 4]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, feed) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize("shared_weight", [False, True])
def test_smoothing_a_hand_built_graph_is_exact(shared_weight):
    model = _two_matmul_model(shared_weight)
    targets = find_targets(model)
    assert [t.node_name for t in targets] == ["mm1", "mm2", "mm3"]
    x = (np.random.default_rng(8).normal(size=(32, 6)) * [1, 1, 30, 1, 0.01, 1]).astype(np.float32)
    absmax = {
        "x": np.abs(x).max(axis=0),
        "r": np.abs(np.maximum(x @ numpy_helper.to_array(model.graph.initializer[0]), 0)).max(axis=0),
    }
    smoothed, new_targets, factors = apply_smoothing(model, targets, absmax, alpha=0.8)
    onnx.checker.check_model(smoothed)
    assert sorted(factors) == ["r_smoothed", "x_smoothed"]
    assert [t.activation for t in new_targets] == ["x_smoothed", "x_smoothed", "r_smoothed"]
    assert sum(n.op_type == "Mul" for n in smoothed.graph.node) == 2  # one Mul per activation, shared by mm1/mm2
    if shared_weight:  # W1 feeds mm1 and mm3 with different factors: each got its own copy
        assert len({t.weight for t in new_targets}) == 3
    for got, ref in zip(_run(smoothed, {"x": x}), _run(model, {"x": x})):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # the residual Add still reads the original, unsmoothed x
    residual = next(n for n in smoothed.graph.node if n.name == "residual")
    assert residual.input[0] == "x"


def test_smoothing_the_tiny_bert_export_is_exact(bert_onnx, data_files):
    from transformers import AutoTokenizer

    from modelpress.calibration_data.feeds import TokenizedFeed
    from modelpress.quantize.calibrate import collect_stats

    model = onnx.load(str(bert_onnx.onnx_path))
    tokenizer = AutoTokenizer.from_pretrained(str(bert_onnx.model.path))
    targets = find_targets(model)
    names = bert_onnx.result.input_names
    cal = TokenizedFeed(data_files.calibration_texts, tokenizer, batch_size=16, max_length=32, input_names=names)
    stats = collect_stats(model, [t.activation for t in targets], cal)
    absmax = {a: s.channel_absmax() for a, s in stats.items()}
    batch = next(iter(TokenizedFeed(data_files.eval_texts, tokenizer, batch_size=40, max_length=32, input_names=names)))
    reference = _run(model, batch)[0]
    for alpha in (0.5, 0.8):
        smoothed, new_targets, factors = apply_smoothing(model, targets, absmax, alpha)
        assert len(factors) == 8  # 4 distinct activations per layer, 2 layers
        assert (  # one Mul per activation but the 2 attention contexts (folded into V: quantize.smooth_fold)
            sum(n.op_type == "Mul" for n in smoothed.graph.node)
            == sum(n.op_type == "Mul" for n in model.graph.node) + 6
        )
        assert max(float(np.abs(np.log(s)).max()) for s in factors.values()) > 0.1  # the factors do something
        got = _run(smoothed, batch)[0]
        assert np.abs(got - reference).max() < 1e-5 * max(1.0, float(np.abs(reference).max()))


def test_gemm_with_transposed_weight_is_smoothed_and_quantized_per_output_channel(tmp_path):
    """Gemm(x, W[out, in], b, transB=1): the output channels are W's rows (axis 0), the input ones its columns."""
    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.static import quantize_static

    rng = np.random.default_rng(10)
    w = (rng.normal(size=(5, 8)) * rng.uniform(0.1, 2.0, size=(5, 1))).astype(np.float32)  # [out=5, in=8]
    b = rng.normal(size=(5,)).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "W", "b"], ["y"], name="gemm", transB=1)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    (t,) = find_targets(model)
    assert (t.weight_axis, t.input_axis) == (0, 1)
    x = (rng.normal(size=(64, 8)) * [1, 1, 20, 1, 1, 0.05, 1, 1]).astype(np.float32)
    smoothed, _, factors = apply_smoothing(model, [t], {"x": np.abs(x).max(axis=0)}, alpha=0.8)
    assert factors["x_smoothed"].shape == (8,)
    np.testing.assert_allclose(_run(smoothed, {"x": x})[0], _run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)

    onnx.save(model, str(tmp_path / "gemm.onnx"))
    summary = quantize_static(
        tmp_path / "gemm.onnx",
        tmp_path / "gemm.int8.onnx",
        [{"x": x[:32]}, {"x": x[32:]}],
        QuantizeConfig(format="qdq"),
    )
    assert summary.quantized_nodes == ("gemm",)
    q = onnx.load(str(tmp_path / "gemm.int8.onnx"))
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("W"))
    assert helper.get_attribute_value(dq.attribute[0]) == 0
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    assert inits[dq.input[1]].shape == (5,)
    got, ref = _run(q, {"x": x})[0], _run(model, {"x": x})[0]
    assert np.abs(got - ref).max() < 0.02 * np.abs(ref).max()
    # the ort format: one MatMulIntegerToFloat on the transposed weight, its bias folded in
    quantize_static(
        tmp_path / "gemm.onnx", tmp_path / "gemm.ort.onnx", [{"x": x[:32]}, {"x": x[32:]}], QuantizeConfig()
    )
    q = onnx.load(str(tmp_path / "gemm.ort.onnx"))
    node = next(n for n in q.graph.node if n.op_type == "MatMulIntegerToFloat")
    assert [n.op_type for n in q.graph.node].count("Gemm") == 0 and len(node.input) == 7
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    assert inits[node.input[1]].shape == (8, 5) and inits[node.input[3]].shape == (5,)
    got = _run(q, {"x": x})[0]
    assert np.abs(got - ref).max() < 0.02 * np.abs(ref).max()


def test_ort_format_with_a_matmul_and_a_gemm_reading_one_activation(tmp_path):
    """The ``ort`` writer turns MatMuls (and plain Gemms) into MatMulIntegerToFloat and other Gemms
    (here alpha = 0.5) into Q/DQ; when both read the same activation, each used to add its own
    ``x_QuantizeLinear`` / ``x_scale`` (an invalid graph: duplicate names). That activation's
    consumers now all take the Q/DQ form."""
    import onnxruntime as ort

    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.static import quantize_static

    rng = np.random.default_rng(11)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["y1"], name="mm"),
        helper.make_node("Gemm", ["x", "W2", "b"], ["y2"], name="gemm", transB=1, alpha=0.5),
        helper.make_node("MatMul", ["y1", "W3"], ["y3"], name="mm_alone"),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 6)).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.normal(size=(5, 8)).astype(np.float32), "W2"),
        numpy_helper.from_array(rng.normal(size=(5,)).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(size=(6, 4)).astype(np.float32), "W3"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [
            helper.make_tensor_value_info("y2", TensorProto.FLOAT, [None, 5]),
            helper.make_tensor_value_info("y3", TensorProto.FLOAT, [None, 4]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = rng.normal(size=(64, 8)).astype(np.float32)
    summary = quantize_static(
        tmp_path / "m.onnx",
        tmp_path / "m.int8.onnx",
        [{"x": x[:32]}, {"x": x[32:]}],
        QuantizeConfig(format="ort", smoothquant=False),
    )
    assert set(summary.quantized_nodes) == {"mm", "gemm", "mm_alone"}
    q = onnx.load(str(tmp_path / "m.int8.onnx"))
    onnx.checker.check_model(q)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("MatMulIntegerToFloat") == 1  # mm_alone; mm shares x with the Gemm
    got = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for g, ref in zip(got, _run(model, {"x": x})):
        assert np.abs(g - ref).max() < 0.05 * np.abs(ref).max()


def test_saturating_cpus_get_7_bit_weights(monkeypatch):
    """x86 without VNNI saturates u8×s8 pair sums in int16 (runtimes.cpu): the onnxruntime preset
    then quantizes weights to ±63; VNNI/AMX CPUs, ARM and the tensorrt preset keep ±127."""
    from modelpress.runtimes import cpu
    from modelpress.quantize.config import QuantizeConfig

    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    for flags, saturates in (
        (frozenset({"avx2"}), True),
        (frozenset({"avx2", "avx512_vnni"}), False),
        (frozenset({"avx2", "avx_vnni"}), False),
        (frozenset({"amx_int8"}), False),
    ):
        monkeypatch.setattr(cpu, "cpu_flags", lambda f=flags: f)
        assert cpu.int8_gemm_saturates() is saturates
        assert QuantizeConfig().weight_qmax == (63 if saturates else 127)
        assert QuantizeConfig(preset="tensorrt").weight_qmax == 127
        assert QuantizeConfig(reduce_range=True).weight_qmax == 63
        assert QuantizeConfig(reduce_range=False).weight_qmax == 127
    monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")
    assert not cpu.int8_gemm_saturates()


def test_quantize_weight_in_a_reduced_range():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(16, 8)).astype(np.float32)
    q, scale = quantize_weight(w, axis=1, per_channel=True, qmax=63)
    assert np.abs(q).max(axis=0).tolist() == [63] * 8
    assert np.abs(q.astype(np.float32) * scale - w).max() <= scale.max() / 2 + 1e-7


def test_a_tie_is_found_by_value_in_memory_and_on_disk_or_by_its_fold(tmp_path):
    """A head holding its own copy of the table, transposed, is tied (compared by value: in memory,
    and through a map of an offloaded model's weights); a copy that differs in one entry is not; a
    head folded from a Transpose of the table is tied without reading either."""
    from modelpress.quantize.offload import DiskWeights
    from modelpress.quantize.targets import fold_weight_transposes
    from modelpress.quantize.tied import tied_tables

    rng = np.random.default_rng(5)
    emb = rng.normal(size=(300, 8)).astype(np.float32)

    def model(head: np.ndarray | None) -> onnx.ModelProto:
        weight = "W" if head is not None else "E_t"
        nodes = [helper.make_node("Gather", ["E", "ids"], ["h"], name="embedding")]
        if head is None:
            nodes.append(helper.make_node("Transpose", ["E"], ["E_t"], name="tie", perm=[1, 0]))
        nodes.append(helper.make_node("MatMul", ["h", weight], ["logits"], name="lm_head"))
        inits = [numpy_helper.from_array(emb, "E")] + ([numpy_helper.from_array(head, "W")] if head is not None else [])
        graph = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
            inits,
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    other = emb.T.copy()
    other[3, 250] += 1e-3
    assert tied_tables(model(emb.T.copy())) == {"h": "lm_head"} and tied_tables(model(other)) == {}
    weights = DiskWeights(tmp_path)
    offloaded = weights.offload(model(emb.T.copy()))
    assert all(t.data_location == TensorProto.EXTERNAL for t in offloaded.graph.initializer)
    assert tied_tables(offloaded, read=weights.view) == {"h": "lm_head"}

    def never(tensor):
        raise AssertionError(f"{tensor.name} was read")

    assert tied_tables(fold_weight_transposes(model(None)), read=never) == {"h": "lm_head"}


def test_a_tied_lm_head_read_through_a_transpose_is_quantized(tmp_path):
    """A tied LM head exports as MatMul(h, Transpose(embedding)) with the embedding also read by a
    Gather: the head used to be no target (its weight is computed at run time) and stayed fp32, the
    biggest MatMul of the bench GPT's prefill. The Transpose is folded into an initializer of its
    own; one that something else also reads is left alone."""
    import onnxruntime as ort

    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.static import quantize_static
    from modelpress.quantize.targets import fold_weight_transposes

    rng = np.random.default_rng(3)
    emb, other = rng.normal(size=(20, 8)).astype(np.float32), rng.normal(size=(6, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["h"], name="embedding"),
        helper.make_node("Transpose", ["E"], ["E_t"], name="tie", perm=[1, 0]),
        helper.make_node("MatMul", ["h", "E_t"], ["logits"], name="lm_head"),
        helper.make_node("Transpose", ["O"], ["O_t"], name="shared", perm=[1, 0]),
        helper.make_node("MatMul", ["h", "O_t"], ["y"], name="reads_shared"),
        helper.make_node("Add", ["O_t", "O_t"], ["z"], name="also_reads_shared"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("logits", "y", "z")],
        [numpy_helper.from_array(emb, "E"), numpy_helper.from_array(other, "O")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert [t.node_name for t in find_targets(model)] == []
    folded = fold_weight_transposes(onnx.load_from_string(model.SerializeToString()))
    assert [n.name for n in folded.graph.node] == [
        "embedding",
        "lm_head",
        "shared",
        "reads_shared",
        "also_reads_shared",
    ]
    assert [t.node_name for t in find_targets(folded)] == ["lm_head"]
    ids = rng.integers(0, 20, 64).astype(np.int64)
    for got, want in zip(_run(folded, {"ids": ids}), _run(model, {"ids": ids})):
        np.testing.assert_array_equal(got, want)
    # kept fp32 (here by name), or an initializer the caller may override (a graph input): not folded,
    # so that the file does not hold the matrix twice / the caller's value still counts
    kept = fold_weight_transposes(onnx.load_from_string(model.SerializeToString()), keep={"lm_head"})
    assert "tie" in [n.name for n in kept.graph.node]
    shadowed = onnx.load_from_string(model.SerializeToString())
    shadowed.graph.input.append(helper.make_tensor_value_info("E", TensorProto.FLOAT, [20, 8]))
    assert "tie" in [n.name for n in fold_weight_transposes(shadowed).graph.node]
    onnx.save(model, str(tmp_path / "m.onnx"))
    summary = quantize_static(
        tmp_path / "m.onnx", tmp_path / "m.int8.onnx", [{"ids": ids}], QuantizeConfig(format="ort")
    )
    assert summary.quantized_nodes == ("lm_head",)
    written = onnx.load(str(tmp_path / "m.int8.onnx")).graph
    assert [n.op_type for n in written.node].count("MatMulIntegerToFloat") == 1
    assert "shared" in [n.name for n in written.node]  # the Transpose something else reads stays
    # the lookup reads the head's int8 matrix (quantize/tied.py): E is no longer in the file
    assert summary.shared_embeddings == ("embedding",) and "E" not in [i.name for i in written.initializer]
    logits = ort.InferenceSession(str(tmp_path / "m.int8.onnx"), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"ids": ids}
    )[0]
    ref = emb[ids] @ emb.T
    assert np.abs(logits - ref).max() < 0.05 * np.abs(ref).max()
