"""Accuracy-aware quantization on a tiny BERT with a planted activation outlier.

Layer 1's FFN gets one intermediate channel that is ~60 on every token (others are O(1)), so the
per-tensor scale of the FFN down-projection's input is ~60× too coarse for the other channels:
plain static int8 (SmoothQuant off) fails a gate that the fp32 fallback of that one node passes.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import (
    INTERMEDIATE,
    HIDDEN,
    LAYERS,
    _bert_config,
    cli,
    load_tiny,
    make_texts,
    make_tokenizer,
    task_for,
    write_recipe,
)

from modelpress.calibration_data.feeds import TokenizedFeed
from modelpress.quantize.analysis import analyze_plan
from modelpress.quantize.config import QuantizeConfig
from modelpress.quantize.static import plan_quantization, write_quantized

PLANTED_CHANNEL, PLANTED_VALUE = 5, 60.0
MAX_DROP = 0.05  # points of mean cosine × 100


@pytest.fixture(scope="module")
def planted(tmp_path_factory, vocab_file):
    import torch
    from transformers import BertModel

    from modelpress.export.onnx_export import export_onnx

    torch.manual_seed(0)
    model = BertModel(_bert_config()).eval()
    with torch.no_grad():
        dense = model.encoder.layer[1].intermediate.dense
        dense.weight[PLANTED_CHANNEL].zero_()
        dense.bias[PLANTED_CHANNEL] = PLANTED_VALUE
        model.encoder.layer[1].output.dense.weight[:, PLANTED_CHANNEL] *= 0.01
    root = tmp_path_factory.mktemp("planted")
    model.save_pretrained(root / "model")
    make_tokenizer(vocab_file).save_pretrained(root / "model")
    task = task_for()
    m, tok = load_tiny(root / "model", task)
    exported = export_onnx(m, tok, root / "model.onnx", task=task)
    feed = TokenizedFeed(make_texts(96, seed=10), tok, batch_size=16, max_length=64, input_names=exported.input_names)
    return root, exported, feed


@pytest.fixture(scope="module")
def plain_plan(planted):
    """Static int8 without SmoothQuant, calibrated once, and its per-node analysis (worst first).
    Full-range 8-bit weights whatever this CPU (the analysis is numpy arithmetic), so the weight
    error is the same small one on every machine."""
    _, exported, feed = planted
    plan = plan_quantization(exported.path, feed, QuantizeConfig(smoothquant=False, reduce_range=False))
    return plan, analyze_plan(plan, feed)


def _planted_node(plan) -> str:
    """The FFN down-projection of layer 1: the last target whose weight is [intermediate, hidden]."""
    ffn_down = [
        t
        for t in plan.targets
        if tuple(next(i.dims for i in plan.model.graph.initializer if i.name == t.weight)) == (INTERMEDIATE, HIDDEN)
    ]
    return ffn_down[-1].node_name


def test_analysis_names_the_planted_layer_first(plain_plan):
    plan, errors = plain_plan
    assert errors[0].node == _planted_node(plan)
    # the planted error is an activation error, not a weight error
    assert errors[0].activation_only_sqnr_db < errors[0].weight_only_sqnr_db - 3
    assert errors[0].sqnr_db < errors[1].sqnr_db - 3


def test_analysis_matches_a_direct_fp32_vs_int8_comparison_of_one_node(planted, tmp_path):
    import onnxruntime as ort

    _, exported, feed = planted
    plan = plan_quantization(exported.path, feed, QuantizeConfig(smoothquant=False, format="qdq"))
    node = _planted_node(plan)
    predicted = next(e for e in analyze_plan(plan, feed) if e.node == node)
    # quantize that node alone, then compare its output tensor in the two models on the same batches
    others = tuple(t.node_name for t in plan.targets if t.node_name != node)
    write_quantized(plan, tmp_path / "one.onnx", keep_fp32=others)
    out_name = next(n.output[0] for n in plan.model.graph.node if n.name == node)

    def outputs(path):
        m = onnx.load(str(path))
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(out_name))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        s = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        rows = []
        for batch in list(feed)[:4]:
            y = s.run([out_name], {i.name: batch[i.name] for i in s.get_inputs()})[0]
            rows.append(y[batch["attention_mask"].astype(bool)])
        return np.concatenate(rows).astype(np.float64)

    ref, got = outputs(exported.path), outputs(tmp_path / "one.onnx")
    direct_sqnr = 10 * np.log10((ref**2).sum() / ((ref - got) ** 2).sum())
    direct_rel = np.sqrt(((ref - got) ** 2).sum() / (ref**2).sum())
    assert abs(direct_sqnr - predicted.sqnr_db) < 0.5
    assert abs(direct_rel - predicted.rel_l2) / direct_rel < 0.06


def test_smoothquant_helps_on_the_planted_model(planted, plain_plan):
    _, exported, feed = planted
    plain = plain_plan[1]
    smooth = analyze_plan(plan_quantization(exported.path, feed, QuantizeConfig(smoothquant=True)), feed)
    assert smooth[0].sqnr_db > plain[0].sqnr_db + 6  # the worst node is far better with smoothing


def _recipe(root, data_files, name, mode):
    return write_recipe(
        root / f"{name}.toml",
        {"name": name, "teacher": str(root / "model")},
        {
            "calibration": {"data": str(data_files.calibration_txt), "num_samples": 96, "max_length": 64},
            "quantize": {"mode": mode, "smoothquant": False},
            "validate": {
                "eval_data": str(data_files.text_jsonl),
                "latency_runs": 2,
                "warmup_runs": 1,
                "batch_sizes": [2],
                "seq_lengths": [16],
                "real_workload": False,
            },
            "gate": {"max_drop": MAX_DROP, "metric": "mean_cosine"},
        },
    )


def test_plain_static_fails_the_gate_and_auto_passes_it_keeping_80_percent_int8(
    planted, plain_plan, data_files, tmp_path
):
    root = planted[0]
    planted_node = _planted_node(plain_plan[0])
    out = tmp_path / "runs"
    auto = cli("run", str(_recipe(root, data_files, "auto", "auto")), "--out", str(out))
    assert auto.returncode == 0, auto.stderr[-2000:]
    report = json.loads((out / "auto" / "report.json").read_text())
    q = report["quantization"]
    # the search's first candidate is plain static int8 (minmax, every node int8): it fails the gate
    plain = q["auto"]["candidates"][0]
    assert (plain["calibration_method"], plain["fp32_nodes"], plain["passed"]) == ("minmax", [], False)
    assert plain["drop"] > MAX_DROP
    chosen = next(c for c in q["auto"]["candidates"] if c["index"] == q["auto"]["chosen"])
    matmuls = len(q["quantized_nodes"]) + len(q["fp32_nodes"])
    weight_matmuls = len(q["quantized_nodes"]) + len(chosen["fp32_nodes"])
    assert weight_matmuls == 6 * LAYERS  # Q, K, V, attention output, FFN up and down per layer
    assert len(q["quantized_nodes"]) >= 0.8 * weight_matmuls
    assert q["auto"]["passed"] and report["gate"]["passed"]
    assert planted_node in chosen["fp32_nodes"]
    assert report["analysis"]["worst"][0]["node"] == planted_node
    assert matmuls > weight_matmuls  # attention-score MatMuls are never candidates
    assert "Accuracy-aware search" in (out / "auto" / "report.md").read_text()


def test_auto_that_cannot_pass_exits_3_with_best_candidate_and_analysis(planted, data_files, tmp_path):
    root, _, _ = planted
    recipe = _recipe(root, data_files, "hopeless", "auto")
    out = tmp_path / "runs"
    proc = cli(
        "run", str(recipe), "--out", str(out), "--set", "gate.max_drop=0.0", "--set", "quantize.max_candidates=4"
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    report = json.loads((out / "hopeless.rejected" / "report.json").read_text())  # a failed gate: <name>.rejected
    auto = report["quantization"]["auto"]
    assert not auto["passed"] and len(auto["candidates"]) == 4
    best = max(auto["candidates"], key=lambda c: c["metric"])
    assert auto["chosen"] == best["index"]
    assert (out / "hopeless.rejected" / "analysis.json").is_file() and not (out / "hopeless").exists()
