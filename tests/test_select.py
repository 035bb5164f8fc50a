"""Selection of the bundle's default (validate.select): latency-ratio intervals against an independent
bootstrap, the choice as a pure function of timings and verdicts, the gate's speed condition on the
interval, and a run in which a candidate made slower on purpose is never the default."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import FAST_CALIBRATION, FAST_VALIDATE, write_recipe

from modelpress.validate.gate import decide, gate_report
from modelpress.validate.select import SLOW_ENV, Candidate, choose, ratio_interval


def _independent_interval(c, r, stat, resamples=20000, seed=123):
    """A plain loop bootstrap with its own generator: resample paired rounds, ratio of the statistic."""
    rng = np.random.RandomState(seed)
    c, r = np.asarray(c), np.asarray(r)
    f = np.median if stat == "median" else np.sum
    out = []
    for _ in range(resamples):
        k = rng.randint(0, len(c), len(c))
        out.append(f(c[k]) / f(r[k]))
    out.sort()
    return f(c) / f(r), out[int(0.025 * resamples)], out[int(0.975 * resamples) - 1]


@pytest.mark.parametrize("stat", ["median", "sum"])
def test_ratio_interval_agrees_with_an_independent_bootstrap(stat):
    rng = np.random.default_rng(7)
    ref = rng.lognormal(np.log(20.0), 0.15, size=40)
    # paired rounds: a shared per-round slowdown (another process) lands on both
    cand = 0.8 * ref * rng.lognormal(0.0, 0.08, size=40)
    got = ratio_interval(cand, ref, stat=stat)
    value, lo, hi = _independent_interval(cand, ref, stat)
    assert got.value == pytest.approx(value, abs=1e-4)
    assert got.ci95[0] == pytest.approx(lo, rel=0.01) and got.ci95[1] == pytest.approx(hi, rel=0.01)
    assert got.ci95[0] < got.value < got.ci95[1] < 1.0
    assert ratio_interval(cand, ref, stat=stat) == got  # seeded: the same timings, the same interval


def _cand(name, precision, size, passed=True, runtime="onnxruntime"):
    return Candidate(name, runtime, precision, f"{name}.onnx", size, passed, 0.1, (0.0, 0.2))


REF = "onnx-fp32"
BASE = np.linspace(10.0, 12.0, 20)  # ms per round, the reference


def _times(**factors):
    return {REF: list(BASE), **{n: list(BASE * f) for n, f in factors.items()}}


def test_the_fastest_passing_candidate_is_chosen_and_the_choice_is_a_pure_function():
    cands = [_cand(REF, "fp32", 90.0), _cand("int8", "int8", 25.0), _cand("openvino-f32", "fp32", 90.0, runtime="ov")]
    times = _times(**{"int8": 0.9, "openvino-f32": 0.7})
    choice = choose(cands, times, reference=REF, max_latency_ratio=1.0, shape="workload", stat="sum", target="x")
    assert choice.chosen == "openvino-f32" and choice.passed
    assert choice.reason.startswith("chose openvino-f32: 1.29x faster than int8 on the eval workload")
    assert choice.reason.endswith("int8 does not pay on x")
    again = choose(cands, times, reference=REF, max_latency_ratio=1.0, shape="workload", stat="sum", target="x")
    assert again == choice


def test_a_candidate_failing_accuracy_or_slower_than_fp32_is_never_chosen():
    cands = [_cand(REF, "fp32", 90.0), _cand("int8", "int8", 25.0), _cand("fast-but-wrong", "int8", 20.0, False)]
    times = _times(**{"int8": 1.3, "fast-but-wrong": 0.2})
    choice = choose(cands, times, reference=REF, max_latency_ratio=1.0, shape="b32xs128", target="x86-64-v3")
    assert choice.chosen == REF and choice.passed  # fp32 won on speed: a pass, and it says why
    assert "int8" not in choice.eligible and "fast-but-wrong" not in choice.eligible
    assert "fast-but-wrong failed the accuracy check" in choice.reason
    assert "int8 too slow at b32xs128 (1.30x the reference [1.30, 1.30])" in choice.reason
    assert "int8 does not pay on x86-64-v3" in choice.reason
    # only the reference passed accuracy: the run pressed nothing good enough
    lone = choose(
        [_cand(REF, "fp32", 90.0), _cand("int8", "int8", 25.0, False)],
        _times(int8=0.5),
        reference=REF,
        max_latency_ratio=1.0,
        shape="b32xs128",
    )
    assert lone.chosen == REF and not lone.passed
    assert lone.reason == "chose onnx-fp32: no other candidate passed; int8 failed the accuracy check"


def test_within_noise_the_smaller_artifact_wins():
    rng = np.random.default_rng(3)
    noise = rng.normal(1.0, 0.05, size=20)
    cands = [_cand(REF, "fp32", 90.0), _cand("int8", "int8", 25.0), _cand("openvino-f32", "fp32", 90.0)]
    # openvino-f32 a hair faster than int8 at the point, the same within the rounds' jitter
    times = {**_times(**{"openvino-f32": 0.8}), "int8": list(BASE * 0.81 * noise)}
    choice = choose(cands, times, reference=REF, max_latency_ratio=1.0, shape="b1xs128")
    assert choice.ratios["openvino-f32"].value < choice.ratios["int8"].value
    between = ratio_interval(times["int8"], times["openvino-f32"])
    assert between.ci95[0] <= 1.0 <= between.ci95[1]
    assert (
        choice.chosen == "int8" and "within noise" in choice.reason and "smaller (25.0 MB vs 90.0 MB)" in choice.reason
    )
    # a clear win is not noise: the faster one stays the choice, whatever its size
    clear = choose(
        cands, _times(**{"openvino-f32": 0.6, "int8": 0.81}), reference=REF, max_latency_ratio=1.0, shape="s"
    )
    assert clear.chosen == "openvino-f32"


def test_the_gate_speed_condition_fails_only_when_the_whole_interval_is_above_the_limit():
    m = {"mean_cosine": 0.999, "min_cosine": 0.99}
    kw = dict(max_drop=0.5, latency={"workload_p50": 1.05}, max_latency_ratio=1.0, latency_shape="workload")
    noisy = decide("feature-extraction", m, m, latency_ci95={"workload_p50": (0.97, 1.12)}, **kw)
    slow = decide("feature-extraction", m, m, latency_ci95={"workload_p50": (1.02, 1.12)}, **kw)
    point = decide("feature-extraction", m, m, **kw)  # no interval: the point ratio decides, as before
    assert noisy.passed and not slow.passed and not point.passed
    assert "[0.970, 1.120]" in noisy.line()


def _run(tiny_bert, data_files, tmp_path, monkeypatch, slow: str, **select):
    from modelpress.cli import main

    monkeypatch.setenv(SLOW_ENV, f"{slow}=40")
    recipe = write_recipe(
        tmp_path / "s.toml",
        {"name": "s", "teacher": str(tiny_bert.path)},
        {
            "calibration": {"data": str(data_files.calibration_txt), **FAST_CALIBRATION},
            "validate": {"eval_data": str(data_files.pairs_jsonl), **FAST_VALIDATE, "latency_runs": 6},
            "gate": {"max_drop": 50.0},
            "select": {"shape": "b2xs16", **select},
        },
    )
    out = tmp_path / "out"
    code = main(["-q", "run", str(recipe), "--out", str(out)])
    return code, out / "s"


def test_a_candidate_made_slower_on_purpose_is_never_the_default(tiny_bert, data_files, tmp_path, monkeypatch):
    from modelpress.bundle import load

    code, bundle = _run(tiny_bert, data_files, tmp_path, monkeypatch, slow="int8", keep="chosen")
    assert code == 0
    report = json.loads((bundle / "report.json").read_text())
    sel = report["selection"]
    assert sel["chosen"] == "onnx-fp32" and sel["shape"] == "b2xs16"
    assert sel["reason"].startswith("chose onnx-fp32:") and "int8 does not pay on" in sel["reason"]
    assert {c["name"] for c in sel["candidates"]} == {"onnx-fp32", "int8"}
    int8 = next(c for c in sel["candidates"] if c["name"] == "int8")
    assert int8["ratio"]["ci95"][0] > 1.0 and int8["latency"][0]["p50_ms"] > 40
    assert report["gate"]["passed"] and report["gate"]["candidate_name"] == "onnx-fp32"
    assert (bundle / "plots" / "candidates.png").stat().st_size > 1000
    md = (bundle / "report.md").read_text()
    assert "## Candidates for the default" in md and "| onnx-fp32 | onnxruntime | fp32 |" in md
    # keep = "chosen": the int8 model left the bundle; bundle.json's default is the fp32 export
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["default"]["file"] == "model.onnx" and not (bundle / "model.int8.onnx").exists()
    with load(bundle) as model:  # the manifest verifies, and the default opens
        assert model.name == "onnx-fp32" and model.runner.model_path.name == "model.onnx"
        assert model.embed(["a text"]).shape[0] == 1
    assert gate_report(report).passed and gate_report(report).candidate_name == "onnx-fp32"


def test_a_slower_fp32_leaves_the_int8_plan_the_default(tiny_bert, data_files, tmp_path, monkeypatch):
    from modelpress.bundle import load

    code, bundle = _run(tiny_bert, data_files, tmp_path, monkeypatch, slow="onnx-fp32", int8_classes="auto")
    assert code == 0
    report = json.loads((bundle / "report.json").read_text())
    # int8 only where it pays, timed here: the projections (the tiny BERT's only class) decided by the ms
    q = report["quantization"]
    (d,) = q["int8_classes"]
    assert d["op_class"] == "projection" and d["how"] == "measured" and d["nodes"] > 0
    assert d["speedup"] == pytest.approx(d["without_ms"] / d["with_ms"], rel=1e-2)
    assert d["int8"] == (d["speedup"] >= 1.02) and bool(q["quantized_nodes"]) == d["int8"]
    assert f"- projection ({d['nodes']} nodes): " in (bundle / "report.md").read_text()
    assert report["selection"]["chosen"] == "int8" and report["gate"]["candidate_name"] == "int8"
    assert report["gate"]["latency_reference"] == "onnx-fp32" and report["gate"]["latency_ratio"] < 1.0
    with load(bundle) as model:
        assert model.runner.model_path.name == "model.int8.onnx"
    with load(bundle, runtime="onnxruntime", model_file="model.onnx") as fp32:  # keep = "all": both are there
        assert fp32.runner.model_path.name == "model.onnx"


def test_a_declared_target_decides_op_classes_by_the_rules_measured_for_its_level():
    from types import SimpleNamespace

    from modelpress.quantize.int8_classes import by_rule
    from modelpress.runtimes.target import resolve_target

    classes = {"projection": ("a", "b"), "conv": ("c",)}
    v3 = {d.op_class: d for d in by_rule(resolve_target("x86-64-v3"), "openvino", classes)}
    assert not v3["projection"].int8 and v3["conv"].int8 and v3["projection"].how == "rule"
    assert "rule for x86-64-v3 on openvino" in v3["projection"].why and "1.8x" in v3["projection"].why
    ort = {d.op_class: d for d in by_rule(resolve_target("x86-64-v4"), "onnxruntime", classes)}
    assert ort["projection"].int8 and not ort["conv"].int8  # x86-64-v4 borrows x86-64-v3's figures
    arm = by_rule(SimpleNamespace(name="arm64"), "onnxruntime", classes)
    assert all(d.int8 and d.how == "no rule" for d in arm)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"select": {"shape": "32x128"}}, 'select.shape: expected "workload" or a timed shape'),
        ({"select": {"keep": "some"}}, "select.keep"),
        ({"select": {"candidates": ["int4"]}}, "select.candidates"),
        ({"select": {"shape": "workload"}, "validate": {"real_workload": False}}, "needs validate.real_workload"),
    ],
)
def test_a_bad_select_table_is_one_line(section, message):
    from modelpress.errors import BadInputError
    from modelpress.recipe import recipe_from_dict

    with pytest.raises(BadInputError, match=message) as err:
        recipe_from_dict({"name": "x", "teacher": "t", **section})
    assert "\n" not in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
def test_the_openvino_ir_for_an_avx2_target_keeps_its_projections_f32_by_the_rule(tiny_bert, data_files, tmp_path):
    """OpenVINO's int8 FullyConnected is ~1.8x slower than f32 on AVX2: for x86-64-v3 with
    select.int8_classes = "auto" the IR has no FakeQuantize, while ORT's graph keeps its int8
    projections (its rule: they pay there) — and the report says a rule decided."""
    import openvino as ov

    from modelpress.cli import main

    recipe = write_recipe(
        tmp_path / "ov.toml",
        {"name": "ov", "teacher": str(tiny_bert.path), "target": "x86-64-v3"},
        {
            "calibration": {"data": str(data_files.calibration_txt), **FAST_CALIBRATION},
            "validate": {
                "eval_data": str(data_files.pairs_jsonl),
                **FAST_VALIDATE,
                "runtimes": ["onnxruntime", "openvino"],
            },
            "gate": {"max_drop": 50.0},
            "select": {"int8_classes": "auto", "candidates": ["int8"]},
        },
    )
    assert main(["-q", "run", str(recipe), "--out", str(tmp_path / "out")]) == 0
    bundle = tmp_path / "out" / "ov"
    report = json.loads((bundle / "report.json").read_text())
    (ov_rule,) = report["openvino_int8_classes"]
    (ort_rule,) = report["quantization"]["int8_classes"]
    assert (ov_rule["op_class"], ov_rule["int8"], ov_rule["how"]) == ("projection", False, "rule")
    assert (ort_rule["op_class"], ort_rule["int8"], ort_rule["how"]) == ("projection", True, "rule")
    assert "x86-64-v3 on openvino" in ov_rule["why"] and report["quantization"]["quantized_nodes"]
    ops = ov.Core().read_model(str(bundle / "openvino" / "model.xml")).get_ops()
    assert not [op for op in ops if op.get_type_name() == "FakeQuantize"]
    # select.candidates = ["int8"]: no openvino-f32 candidate, ORT fp32 (the floor) always
    assert {c["name"] for c in report["selection"]["candidates"]} == {"onnx-fp32", "int8", "int8-openvino"}
