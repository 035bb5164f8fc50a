"""Static int8 on the tiny BERT export: exactly the constant-weight MatMuls become int8 — as Q/DQ
(``qdq``, which ONNX Runtime fuses into MatMulIntegerToFloat) or as ORT's fused ops written directly
(``ort``, bias included) — attention-score MatMuls stay fp32; exclusions, presets, padding-free
calibration, the three calibration methods, accuracy vs fp32, atomic writes."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from conftest import make_texts
from onnx import numpy_helper

from modelpress.calibration_data.feeds import TokenizedFeed
from modelpress.errors import BadInputError
from modelpress.tasks.feature_extraction import pool
from modelpress.quantize.calibrate import collect_stats
from modelpress.quantize.config import QuantizeConfig
from modelpress.quantize.qdq import activation_params
from modelpress.quantize.static import quantize_static
from modelpress.quantize.stats import TensorRange
from modelpress.quantize.targets import find_targets


@pytest.fixture(scope="module")
def tokenizer(bert_onnx):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bert_onnx.model.path))


@pytest.fixture(scope="module")
def cal_feed(bert_onnx, tokenizer, data_files):
    return TokenizedFeed(
        data_files.calibration_texts, tokenizer, batch_size=16, max_length=32, input_names=bert_onnx.result.input_names
    )


@pytest.fixture(scope="module")
def fp32(bert_onnx):
    return onnx.load(str(bert_onnx.onnx_path))


def _const_weight_matmuls(model: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [
        n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits and n.input[0] not in inits
    ]


def _session(path, *, emulate: bool = False):
    """ONNX Runtime on the CPU; ``emulate``: no graph optimizations, so Q/DQ run as float
    quantize-dequantize around fp32 MatMuls (TensorRT's arithmetic, free of the CPU's int8 GEMM)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if emulate:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _embed(path, tokenizer, texts, names, *, emulate: bool = False) -> np.ndarray:
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=32, return_tensors="np")
    feed = {k: enc[k].astype(np.int64) for k in names}
    hidden = _session(path, emulate=emulate).run(None, feed)[0]
    return pool(hidden, feed["attention_mask"], pooling="mean", normalize=True)


@pytest.fixture(scope="module")
def qdq_int8(bert_onnx, cal_feed, tmp_path_factory):
    """The portable Q/DQ graph (what TensorRT reads; ONNX Runtime fuses it at load time)."""
    out = tmp_path_factory.mktemp("int8-qdq") / "model.int8.onnx"
    return out, quantize_static(bert_onnx.onnx_path, out, cal_feed, QuantizeConfig(format="qdq"))


@pytest.fixture(scope="module")
def default_int8(bert_onnx, cal_feed, tmp_path_factory):
    """The default for the onnxruntime preset: ORT's fused int8 ops written directly."""
    out = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    return out, quantize_static(bert_onnx.onnx_path, out, cal_feed, QuantizeConfig())


@pytest.fixture(scope="module")
def unfused_int8(bert_onnx, cal_feed, tmp_path_factory):
    """The ``ort`` format on model.onnx itself (``quantize.fuse = false``)."""
    out = tmp_path_factory.mktemp("int8-unfused") / "model.int8.onnx"
    return out, quantize_static(bert_onnx.onnx_path, out, cal_feed, QuantizeConfig(fuse=False))


def _int8_weight_consumers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes reading an int8 initializer (weight DequantizeLinear, or MatMulIntegerToFloat)."""
    int8 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2}
    return [n for n in model.graph.node if any(x in int8 for x in n.input)]


# -- structure ---------------------------------------------------------------------------------------
def test_default_graph_format_per_preset():
    assert QuantizeConfig().graph_format == "ort"
    assert QuantizeConfig(preset="tensorrt").graph_format == "qdq"
    assert QuantizeConfig(symmetric_activations=True).graph_format == "qdq"
    # what decides whether `run` writes a separate model.int8.trt.onnx for the engine
    assert QuantizeConfig(preset="tensorrt").tensorrt_readable
    assert not QuantizeConfig().tensorrt_readable
    assert not QuantizeConfig(preset="tensorrt", symmetric_activations=False).tensorrt_readable
    assert not QuantizeConfig(preset="tensorrt", format="ort", symmetric_activations=False).tensorrt_readable
    with pytest.raises(BadInputError, match="quantize.format"):
        QuantizeConfig(format="ort", preset="tensorrt")


def test_qdq_quantizes_exactly_the_constant_weight_matmuls(fp32, qdq_int8):
    path, summary = qdq_int8
    weight_matmuls = _const_weight_matmuls(fp32)
    all_matmuls = [n.name for n in fp32.graph.node if n.op_type == "MatMul"]
    assert len(weight_matmuls) == 12  # 6 per layer: Q, K, V, attention out, FFN up, FFN down
    assert len(all_matmuls) == 16  # + 2 attention-score MatMuls per layer
    assert summary.format == "qdq"
    assert sorted(summary.quantized_nodes) == sorted(weight_matmuls)
    assert sorted(summary.fp32_nodes) == sorted(set(all_matmuls) - set(weight_matmuls))

    q = onnx.load(str(path))
    inits = {i.name: i for i in q.graph.initializer}
    int8_weight_dq = [n for n in _int8_weight_consumers(q) if n.op_type == "DequantizeLinear"]
    assert len(int8_weight_dq) == len(_int8_weight_consumers(q)) == len(weight_matmuls) == 12
    ops = Counter(n.op_type for n in q.graph.node)
    assert ops["QuantizeLinear"] == 8  # one per distinct activation: 4 per layer (Q/K/V share)
    assert ops["DequantizeLinear"] == 8 + 12
    assert ops["MatMul"] == 16  # no MatMul removed or added
    producers = {o: n for n in q.graph.node for o in n.output}
    for node in q.graph.node:
        if node.op_type != "MatMul":
            continue
        a, w = producers.get(node.input[0]), producers.get(node.input[1])
        if node.name in summary.quantized_nodes:
            assert a.op_type == "DequantizeLinear" and producers[a.input[0]].op_type == "QuantizeLinear"
            assert w.op_type == "DequantizeLinear" and w.input[0] in inits
        else:  # attention scores: both inputs computed at run time, neither quantized
            assert all(p is None or p.op_type != "DequantizeLinear" for p in (a, w))
    # the fp32 copies of the quantized weights are gone: 4 bytes per weight became 1
    fp32_weights = {n.input[1] for n in fp32.graph.node if n.name in weight_matmuls}
    assert not fp32_weights & set(inits)
    n_weights = sum(numpy_helper.to_array(i).size for i in fp32.graph.initializer if i.name in fp32_weights)
    assert path.stat().st_size <= fp32.ByteSize() - 2 * n_weights


def test_onnxruntime_fuses_every_qdq_matmul_into_matmul_integer_to_float(qdq_int8, tmp_path):
    import onnxruntime as ort

    path, summary = qdq_int8
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert ops["MatMulIntegerToFloat"] == len(summary.quantized_nodes) == 12
    assert ops["MatMul"] + ops["FusedMatMul"] == 4  # the attention-score MatMuls, fp32
    assert ops["QLinearMatMul"] == 0


def test_ort_format_writes_fused_int8_matmuls_with_their_bias(fp32, unfused_int8):
    path, summary = unfused_int8
    assert summary.format == "ort" and len(summary.quantized_nodes) == 12 and len(summary.fp32_nodes) == 4
    q = onnx.load(str(path))
    ops, fp32_ops = Counter(n.op_type for n in q.graph.node), Counter(n.op_type for n in fp32.graph.node)
    mif = [n for n in q.graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert sorted(n.name for n in mif) == sorted(summary.quantized_nodes) == sorted(_const_weight_matmuls(fp32))
    assert all(n.domain == "com.microsoft" for n in mif)
    assert any(o.domain == "com.microsoft" for o in q.opset_import)
    assert ops["MatMul"] == 4 and ops["QuantizeLinear"] == 8 and ops["DequantizeLinear"] == 0
    assert _int8_weight_consumers(q) == mif
    producers = {o: n for n in q.graph.node for o in n.output}
    inits = {i.name: i for i in q.graph.initializer}
    original = {n.name: n for n in fp32.graph.node}
    for n in mif:
        assert producers[n.input[0]].op_type == "QuantizeLinear"
        w = inits[n.input[1]]
        assert w.data_type == onnx.TensorProto.INT8
        assert list(w.dims) == list(next(i for i in fp32.graph.initializer if i.name == original[n.name].input[1]).dims)
        assert list(inits[n.input[3]].dims) == [w.dims[1]]  # one weight scale per output column
        assert len(n.input) == 7 and inits[n.input[6]].data_type == onnx.TensorProto.FLOAT  # the fused bias
    assert ops["Add"] == fp32_ops["Add"] - 12  # every bias Add went into its MatMulIntegerToFloat


def test_ort_and_qdq_formats_compute_the_same_thing(
    bert_onnx, unfused_int8, default_int8, qdq_int8, tokenizer, data_files
):
    names = bert_onnx.result.input_names
    a = _embed(unfused_int8[0], tokenizer, data_files.eval_texts, names)
    b = _embed(qdq_int8[0], tokenizer, data_files.eval_texts, names)
    assert np.abs(a - b).max() < 1e-4
    # one calibration, three graph layouts; QAttention's own arithmetic stays within a hair of it
    fused = _embed(default_int8[0], tokenizer, data_files.eval_texts, names)
    fp32 = _embed(bert_onnx.onnx_path, tokenizer, data_files.eval_texts, names)
    assert np.abs(fused - b).mean() < 0.25 * np.abs(b - fp32).mean()
    assert default_int8[1].tensors == unfused_int8[1].tensors == qdq_int8[1].tensors


def test_summary_is_consistent_and_serializable(default_int8):
    path, summary = default_int8
    d = json.loads(json.dumps(summary.to_dict()))
    assert d["preset"] == "onnxruntime" and d["calibration_method"] == "minmax" and d["smoothquant"] is True
    assert len(summary.tensors) == 8 and all(t.tensor.endswith("_smoothed") for t in summary.tensors)
    q = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    for t in summary.tensors:
        assert t.clipped == 0.0 and (t.lo, t.hi) == (t.observed_min, t.observed_max)
        p = activation_params(TensorRange(t.lo, t.hi, 0.0), symmetric=False)
        assert (t.scale, t.zero_point) == (p.scale, p.zero_point)
        assert float(inits[f"{t.tensor}_scale"]) == pytest.approx(t.scale, rel=1e-6)
        zp = inits[f"{t.tensor}_zero_point"]
        assert zp.dtype == np.uint8 and int(zp) == t.zero_point
    assert summary.peak_rss_mb > 0 and summary.calibration_seconds >= 0


def test_writes_atomically(default_int8, qdq_int8):
    for path, _ in (default_int8, qdq_int8):
        assert sorted(p.name for p in path.parent.iterdir()) == ["model.int8.onnx"]
        onnx.checker.check_model(str(path))


# -- accuracy --------------------------------------------------------------------------------------------
def test_int8_embeddings_are_close_to_fp32(bert_onnx, default_int8, tokenizer, data_files):
    names = bert_onnx.result.input_names
    ref = _embed(bert_onnx.onnx_path, tokenizer, data_files.eval_texts, names)
    got = _embed(default_int8[0], tokenizer, data_files.eval_texts, names)
    cos = (ref * got).sum(axis=1)
    # measured on this tiny random model: mean 0.99989, min 0.9995
    assert cos.mean() > 0.999 and cos.min() > 0.995, (cos.mean(), cos.min())
    assert np.abs(ref - got).max() > 1e-6  # int8 did change the arithmetic


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
@pytest.mark.parametrize("smoothquant", [True, False])
def test_every_calibration_method_runs_and_stays_accurate(
    bert_onnx, cal_feed, tokenizer, data_files, tmp_path, method, smoothquant
):
    cfg = QuantizeConfig(calibration_method=method, smoothquant=smoothquant, percentile=99.9, num_bins=512)
    out = tmp_path / "m.int8.onnx"
    summary = quantize_static(bert_onnx.onnx_path, out, cal_feed, cfg)
    assert summary.calibration_method == method and len(summary.quantized_nodes) == 12
    assert len(summary.tensors) == 8 and sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.onnx"]
    for t in summary.tensors:
        assert t.lo < t.hi and 0.0 <= t.clipped <= 1.0
        if method == "minmax":
            assert (t.lo, t.hi, t.clipped) == (t.observed_min, t.observed_max, 0.0)
        else:  # a histogram method never widens the observed range by more than a bin
            assert t.hi - t.lo <= 1.01 * (t.observed_max - t.observed_min)
    if method == "percentile":
        assert any(t.clipped > 0 for t in summary.tensors)  # 99.9 % of the tokens cut something
    smooth_muls = [n for n in onnx.load(str(out)).graph.node if n.name.endswith("_smooth_mul")]
    # 8 smoothed activations; the 2 attention contexts' divisions are folded into V (quantize.smooth_fold)
    assert len(smooth_muls) == (6 if smoothquant else 0)
    names = bert_onnx.result.input_names
    ref = _embed(bert_onnx.onnx_path, tokenizer, data_files.eval_texts, names)
    cos = (ref * _embed(out, tokenizer, data_files.eval_texts, names)).sum(axis=1)
    assert cos.mean() > 0.999 and cos.min() > 0.99, (cos.mean(), cos.min())


# -- options --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fmt, fuse, int8, readers", [("ort", True, 8, 6), ("ort", False, 10, 10), ("qdq", True, 10, 10)]
)
def test_nodes_to_exclude_stay_fp32(bert_onnx, fp32, cal_feed, tmp_path, fmt, fuse, int8, readers):
    """The first node is layer 0's query projection: on ORT's fused graph its key and value
    projections (one QAttention with it) stay fp32 with it, and the summary says so."""
    weight_matmuls = _const_weight_matmuls(fp32)
    excluded = (weight_matmuls[0], weight_matmuls[-1])
    out = tmp_path / "x.onnx"
    summary = quantize_static(
        bert_onnx.onnx_path, out, cal_feed, QuantizeConfig(nodes_to_exclude=excluded, format=fmt, fuse=fuse)
    )
    assert len(summary.quantized_nodes) == int8 and not set(excluded) & set(summary.quantized_nodes)
    assert set(excluded) <= set(summary.fp32_nodes) and len(summary.fp32_nodes) == 16 - int8
    q = onnx.load(str(out))
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    inits = {i.name for i in q.graph.initializer}
    for node in q.graph.node:
        if node.name in excluded:  # still a MatMul reading its fp32 initializer and the raw activation
            assert node.op_type == "MatMul" and node.input[1] in inits and producers.get(node.input[1]) is None
            assert producers.get(node.input[0]) not in ("DequantizeLinear", "QuantizeLinear")
    assert len(_int8_weight_consumers(q)) == readers


def test_unknown_excluded_node_is_bad_input_and_writes_nothing(bert_onnx, cal_feed, tmp_path):
    with pytest.raises(BadInputError, match="no_such_node") as exc:
        quantize_static(
            bert_onnx.onnx_path, tmp_path / "x.onnx", cal_feed, QuantizeConfig(nodes_to_exclude=("no_such_node",))
        )
    assert "nodes_to_exclude" in str(exc.value)
    with pytest.raises(BadInputError, match="no Gemm node"):
        quantize_static(bert_onnx.onnx_path, tmp_path / "x.onnx", cal_feed, QuantizeConfig(op_types=("Gemm",)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("smoothquant", [True, False])
def test_tensorrt_preset_is_symmetric_with_zero_points_zero(
    bert_onnx, cal_feed, tmp_path, tokenizer, data_files, smoothquant
):
    out = tmp_path / "trt.onnx"
    summary = quantize_static(
        bert_onnx.onnx_path, out, cal_feed, QuantizeConfig(preset="tensorrt", smoothquant=smoothquant)
    )
    assert summary.preset == "tensorrt" and len(summary.tensors) == 8
    for t in summary.tensors:
        assert t.zero_point == 0
        assert t.scale == pytest.approx(max(abs(t.observed_min), abs(t.observed_max)) / 127, rel=1e-6)
        if not smoothquant:
            assert t.lo == -t.hi
    q = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    zero_points = [inits[n.input[2]] for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(zero_points) == 8 + 8 + 12
    assert all(z.dtype == np.int8 and not z.any() for z in zero_points)
    names = bert_onnx.result.input_names
    ref = _embed(bert_onnx.onnx_path, tokenizer, data_files.eval_texts, names)
    # the graph is TensorRT's: judge its arithmetic, not an AVX2 CPU's saturating s8 GEMM
    cos = (ref * _embed(out, tokenizer, data_files.eval_texts, names, emulate=True)).sum(axis=1)
    assert cos.mean() > 0.999, cos.mean()


@pytest.mark.parametrize("fmt", ["ort", "qdq"])
def test_per_tensor_weights(bert_onnx, cal_feed, tmp_path, fmt):
    out = tmp_path / "pt.onnx"
    quantize_static(bert_onnx.onnx_path, out, cal_feed, QuantizeConfig(per_channel=False, format=fmt))
    q = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    consumers = _int8_weight_consumers(q)
    # DequantizeLinear(w, scale, zp) | MatMulIntegerToFloat(a, w, a_s, w_s, ...) | QAttention(a, w, bias, a_s, w_s, ...)
    scale_input = {"DequantizeLinear": 1, "MatMulIntegerToFloat": 3, "QAttention": 4}
    assert len(consumers) == (12 if fmt == "qdq" else 6 + 2)  # 2 layers' Q/K/V are 2 QAttention
    assert all(inits[n.input[scale_input[n.op_type]]].shape == () for n in consumers)


# -- padding-free calibration ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def padding_texts():
    return make_texts(48, seed=20, min_words=1, max_words=30)


def test_padding_rows_are_dropped_from_the_statistics(fp32, bert_onnx, tokenizer, padding_texts):
    names = bert_onnx.result.input_names
    padded = TokenizedFeed(padding_texts, tokenizer, batch_size=16, max_length=64, input_names=names)
    single = TokenizedFeed(padding_texts, tokenizer, batch_size=1, max_length=64, input_names=names)
    masks = [b["attention_mask"] for b in padded]
    real, total = sum(int(m.sum()) for m in masks), sum(m.size for m in masks)
    assert real < 0.7 * total  # padding-heavy batches
    acts = sorted({t.activation for t in find_targets(fp32)})
    excl = collect_stats(fp32, acts, padded, exclude_padding=True)
    incl = collect_stats(fp32, acts, padded, exclude_padding=False)
    alone = collect_stats(fp32, acts, single, exclude_padding=False)  # no padding at all
    changed = 0
    for a in acts:
        assert excl[a].count == alone[a].count == real and incl[a].count == total
        np.testing.assert_allclose(excl[a].ch_min, alone[a].ch_min, atol=1e-5)
        np.testing.assert_allclose(excl[a].ch_max, alone[a].ch_max, atol=1e-5)
        diff = max(np.abs(incl[a].ch_min - alone[a].ch_min).max(), np.abs(incl[a].ch_max - alone[a].ch_max).max())
        changed += diff > 1e-2
    assert changed >= 3, "padding tokens should widen the ranges of several tensors"


def test_padding_exclusion_changes_the_quantization_ranges(bert_onnx, tokenizer, padding_texts, tmp_path):
    names = bert_onnx.result.input_names
    padded = TokenizedFeed(padding_texts, tokenizer, batch_size=16, max_length=64, input_names=names)
    single = TokenizedFeed(padding_texts, tokenizer, batch_size=1, max_length=64, input_names=names)

    def ranges(feed, exclude):
        s = quantize_static(bert_onnx.onnx_path, tmp_path / "r.onnx", feed, QuantizeConfig(exclude_padding=exclude))
        return {t.tensor: (t.lo, t.hi) for t in s.tensors}

    with_exclusion, without_exclusion, reference = ranges(padded, True), ranges(padded, False), ranges(single, True)
    assert with_exclusion.keys() == reference.keys() == without_exclusion.keys()
    for k in reference:
        np.testing.assert_allclose(with_exclusion[k], reference[k], rtol=1e-5, atol=1e-6)
    assert any(
        abs(without_exclusion[k][0] - reference[k][0]) > 1e-3 or abs(without_exclusion[k][1] - reference[k][1]) > 1e-3
        for k in reference
    )


def test_calibration_without_batches_is_bad_input(fp32):
    with pytest.raises(BadInputError, match="no batches"):
        collect_stats(fp32, [find_targets(fp32)[0].activation], [])


def test_nodes_are_named_by_module_path_and_excluded_by_it(bert_onnx, cal_feed, tmp_path):
    """The analysis speaks in the model's module paths (from the exporter's name scopes), and
    nodes_to_exclude takes them: a path covers the modules under it."""
    from modelpress.quantize.analysis import analyze_plan
    from modelpress.quantize.static import plan_quantization

    plan = plan_quantization(bert_onnx.onnx_path, cal_feed, QuantizeConfig())
    errors = analyze_plan(plan, cal_feed)
    modules = {e.module for e in errors}
    expected = {
        f"encoder.layer.{i}.{m}"
        for i in range(2)
        for m in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        )
    }
    assert modules == expected
    assert all(e.label == f"{e.module} ({e.node})" for e in errors)
    one = next(e for e in errors if e.module == "encoder.layer.1.output.dense")
    out = tmp_path / "ex.onnx"
    summary = quantize_static(
        bert_onnx.onnx_path,
        out,
        cal_feed,
        QuantizeConfig(nodes_to_exclude=("encoder.layer.0", "encoder.layer.1.output.dense")),
    )
    assert len(summary.quantized_nodes) == 5 and one.node in summary.fp32_nodes
    with pytest.raises(BadInputError, match="no node or module named encoder.layer.7"):
        quantize_static(bert_onnx.onnx_path, out, cal_feed, QuantizeConfig(nodes_to_exclude=("encoder.layer.7",)))


def test_the_per_node_analysis_holds_one_batch_and_equals_the_whole_set_at_once(bert_onnx, cal_feed, monkeypatch):
    """analyze_plan streams: one batch's activations at a time (at 0.5 B every batch's inputs of every
    node were held, then copied once more). Its SQNRs equal the ones computed here from every batch at
    once (numpy on the fp32 graph's node inputs, the plan's scales)."""
    import onnxruntime as ort

    from modelpress.quantize import analysis, chunks
    from modelpress.quantize.calibrate import _session_with_outputs, _token_rows
    from modelpress.quantize.static import plan_quantization

    plan = plan_quantization(bert_onnx.onnx_path, cal_feed, QuantizeConfig())
    feeds = list(cal_feed)[:3]
    assert len(feeds) >= 2  # more than one batch, or streaming proves nothing
    runs: list[int] = []
    real_run = ort.InferenceSession.run

    def run(self, names, feed, *args):
        runs.append(len(names))
        return real_run(self, names, feed, *args)

    monkeypatch.setattr(ort.InferenceSession, "run", run)
    monkeypatch.setattr(chunks, "COLUMNS", 5)  # every weight by chunks of columns too (an LM head's bound)
    errors = {e.node: e for e in analysis.analyze_plan(plan, feeds)}
    assert len(runs) == len(feeds)  # one session run per batch: nothing re-run, nothing held across
    monkeypatch.setattr(ort.InferenceSession, "run", real_run)

    acts = list(dict.fromkeys(t.activation for t in plan.targets))
    session = _session_with_outputs(plan.model, acts, weights_dir=plan.weights.folder)  # its weights are on disk
    names = [i.name for i in session.get_inputs()]
    outs = [dict(zip(acts, session.run(acts, {k: f[k] for k in names}))) for f in feeds]
    for t in plan.targets:
        x = np.concatenate([_token_rows(o[t.activation], f["attention_mask"]) for o, f in zip(outs, feeds)])
        w = plan.weight(t.weight).astype(np.float32)
        p = plan.activation_quant(t.activation)
        xq = (np.clip(np.round(x / p.scale) + p.zero_point, 0, 255) - p.zero_point) * p.scale
        scale = np.abs(w).max(axis=0) / 127  # per output channel, symmetric
        wq = np.clip(np.round(w / scale), -127, 127) * scale
        y = x @ w
        sqnr = 10 * np.log10(np.sum(y.astype(np.float64) ** 2) / np.sum((y - xq @ wq).astype(np.float64) ** 2))
        assert errors[t.node_name].sqnr_db == pytest.approx(sqnr, abs=0.05), t.node_name
