"""Output sensitivity (``quantize.auto_sensitivity = "output"``) on a tiny cross-encoder with two planted outliers.

Layer 0's FFN gets one intermediate channel that is 20 on every token, layer 1's (the last) one that is 60, so
both FFN down-projections have a coarse per-tensor input scale, layer 1's the coarser: the lowest SQNR. But layer
1's FFN output is scaled down 20×, so its error barely reaches the score, while layer 0's error runs through the
layer after it. The per-node SQNR names layer 1 first; what the ranker's user sees (the score) says layer 0.
The reference for every error is the PyTorch model's logits (not the ONNX graphs the module runs).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import HIDDEN, INTERMEDIATE, _bert_config, make_texts, make_tokenizer
from transformers import BertForSequenceClassification

from modelpress.errors import BadInputError
from modelpress.export.onnx_export import export_onnx
from modelpress.models import load_model_and_preprocessor
from modelpress.quantize.analysis import analyze_plan
from modelpress.quantize.auto import Evaluation, auto_quantize
from modelpress.quantize.config import CALIBRATION_METHODS, QuantizeConfig
from modelpress.quantize.sensitivity import output_sensitivity
from modelpress.quantize.static import plan_quantization, write_quantized
from modelpress.recipe import recipe_from_dict
from modelpress.tasks import configure_task

CHANNEL = 5
CFG = QuantizeConfig(smoothquant=False, reduce_range=False)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, vocab_file):
    torch.manual_seed(0)
    config = _bert_config()
    config.num_labels = 1
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        for layer, value, out_scale in ((0, 20.0, 1.0), (1, 60.0, 0.05)):
            block = model.bert.encoder.layer[layer]
            block.intermediate.dense.weight[CHANNEL].zero_()
            block.intermediate.dense.bias[CHANNEL] = value
            block.output.dense.weight[:, CHANNEL] *= 0.01
            block.output.dense.weight *= out_scale
    root = tmp_path_factory.mktemp("planted-ranker")
    model.save_pretrained(root / "model")
    make_tokenizer(vocab_file).save_pretrained(root / "model")
    task = configure_task("text-ranking", {}, model_dir=root / "model")
    m, tok = load_model_and_preprocessor(str(root / "model"), task)
    exported = export_onnx(m, tok, root / "model.onnx", task=task)
    texts = make_texts(128, seed=40)
    pairs = list(zip(texts[:64], texts[64:]))
    feeds = []
    for i in range(0, len(pairs), 16):
        enc = tok(
            [a for a, _ in pairs[i : i + 16]], [b for _, b in pairs[i : i + 16]], padding=True, return_tensors="np"
        )
        feeds.append({n: enc[n].astype(np.int64) for n in exported.input_names})
    with torch.no_grad():
        logits = np.concatenate([model(**{k: torch.from_numpy(v) for k, v in f.items()}).logits.numpy() for f in feeds])
    plan = plan_quantization(exported.path, feeds, CFG)
    return exported, feeds, logits.ravel(), plan


def _ffn_down(plan) -> list[str]:
    """The FFN down-projections, layer 0's first: targets whose weight is [intermediate, hidden]."""
    shapes = {i.name: tuple(i.dims) for i in plan.model.graph.initializer}
    return [t.node_name for t in plan.targets if shapes.get(t.weight) == (INTERMEDIATE, HIDDEN)]


def _score_rms(path, feeds, logits) -> float:
    """RMS of the graph's scores against the PyTorch logits."""
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    got = np.concatenate([s.run(["logits"], {n: f[n] for n in names})[0].ravel() for f in feeds])
    return float(np.sqrt(np.mean((got - logits) ** 2)))


def test_sqnr_names_the_last_layer_but_the_score_error_names_layer_0(planted, tmp_path):
    exported, feeds, logits, plan = planted
    layer0, layer1 = _ffn_down(plan)
    assert analyze_plan(plan, feeds)[0].node == layer1  # the coarsest input scale: the lowest SQNR
    rows = output_sensitivity(plan, exported.path, feeds)
    assert rows[0].node == layer0 and rows[0].module == "bert.encoder.layer.0.output.dense"
    assert len(rows) == len(plan.targets)
    # each gain is what returning that node alone buys against the PyTorch logits, measured here
    full = write_quantized(plan, tmp_path / "int8.onnx")
    base = _score_rms(tmp_path / "int8.onnx", feeds, logits)
    assert full.quantized_nodes and base > 0
    for node in (layer0, layer1):
        write_quantized(plan, tmp_path / "keep.onnx", keep_fp32=(node,))
        kept = _score_rms(tmp_path / "keep.onnx", feeds, logits)
        row = next(r for r in rows if r.node == node)
        assert row.output_rms == pytest.approx(kept, rel=0.02, abs=1e-5)
        assert row.gain == pytest.approx(base - kept, rel=0.05, abs=1e-5)
    gains = {r.node: r.gain for r in rows}
    assert gains[layer0] > 0.3 * base and gains[layer0] > 3 * gains[layer1]


def _search(planted, tmp_path, sensitivity):
    exported, feeds, logits, plan = planted
    layer0, _ = _ffn_down(plan)
    # passes only once layer 0's projection is fp32: halfway between its error and plain int8's
    write_quantized(plan, tmp_path / "base.onnx")
    write_quantized(plan, tmp_path / "keep0.onnx", keep_fp32=(layer0,))
    base, kept = (_score_rms(tmp_path / f, feeds, logits) for f in ("base.onnx", "keep0.onnx"))
    bar = (base + kept) / 2

    def evaluate(path):
        rms = _score_rms(path, feeds, logits)
        return Evaluation(metric=-rms, drop=rms, passed=rms < bar, latency_ms=0.0)

    cfg = CFG.with_(mode="auto", auto_sensitivity=sensitivity, max_candidates=3)
    out = tmp_path / f"{sensitivity}.int8.onnx"
    result = auto_quantize(exported.path, out, feeds, cfg, evaluate=evaluate, methods=("minmax",))
    return result, out, layer0, evaluate


def test_auto_with_output_sensitivity_returns_layer_0_first_and_passes(planted, tmp_path):
    result, out, layer0, evaluate = _search(planted, tmp_path, "output")
    assert result.passed
    first = result.candidates[1]  # after plain int8: the first node returned to fp32
    assert first.fp32_nodes == (layer0,) and first.passed
    assert result.candidates[result.chosen].fp32_nodes == (layer0,)
    # the written graph leaves layer 0's projection fp32 and every other target int8
    assert layer0 not in result.summary.quantized_nodes
    assert len(result.summary.quantized_nodes) == len(result.plan.targets) - 1
    assert evaluate(out).passed
    assert result.to_dict()["sensitivity"][0]["node"] == layer0


def test_auto_with_sqnr_returns_the_last_layer_first_and_that_fails(planted, tmp_path):
    result, _, layer0, _ = _search(planted, tmp_path, "sqnr")
    first = result.candidates[1]
    assert first.fp32_nodes != (layer0,) and not first.passed
    assert result.to_dict()["sensitivity"] is None


def test_the_recipe_key_is_checked():
    assert (
        recipe_from_dict(
            {"name": "r", "teacher": "t", "quantize": {"auto_sensitivity": "output"}}
        ).quantize.auto_sensitivity
        == "output"
    )
    with pytest.raises(BadInputError, match="quantize.auto_sensitivity"):
        QuantizeConfig(auto_sensitivity="loss")


def test_with_no_method_passing_the_node_search_starts_from_the_plan_closest_to_the_scores(planted, tmp_path):
    exported, feeds, logits, _ = planted
    errors = {}
    for method in CALIBRATION_METHODS:
        write_quantized(
            plan_quantization(exported.path, feeds, CFG.with_(calibration_method=method)), tmp_path / "m.onnx"
        )
        errors[method] = _score_rms(tmp_path / "m.onnx", feeds, logits)
    closest = min(errors, key=errors.get)
    assert closest != CALIBRATION_METHODS[-1]  # the gate below favours the last method tried: they must differ
    drops = iter(range(9, 0, -1))

    def evaluate(path):  # never passes; each candidate's drop a little lower than the one before
        return Evaluation(metric=0.0, drop=float(next(drops)), passed=False, latency_ms=0.0)

    cfg = CFG.with_(mode="auto", auto_sensitivity="output", max_candidates=len(CALIBRATION_METHODS) + 1)
    result = auto_quantize(exported.path, tmp_path / "o.onnx", feeds, cfg, evaluate=evaluate)
    assert result.candidates[-1].calibration_method == closest and result.candidates[-1].fp32_nodes
    assert result.plan.cfg.calibration_method == closest
    assert set(result.to_dict()["method_output_rms"]) == set(CALIBRATION_METHODS)
