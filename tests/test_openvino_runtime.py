"""The OpenVINO runtime: the runner against ONNX Runtime on the same graphs, the IR of our Q/DQ
plan, a run that builds and gates a bundle for both runtimes, and what a machine without the
openvino package is told."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import FAST_CALIBRATION, FAST_VALIDATE, write_recipe

from modelpress.errors import BackendUnavailableError, BadInputError

needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino not installed (pip install 'modelpress[openvino]')"
)


def _feed(tokenizer, texts, input_names):
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=32, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in input_names}


def _run(runner_cls, path, feed, **kw):
    with runner_cls(path, threads=1, **kw) as r:
        return next(iter(r.run(feed).values()))


def _mean_pool(hidden, mask):
    m = mask[..., None]
    e = (hidden * m).sum(1) / m.sum(1)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


@needs_openvino
def test_fp32_ir_matches_onnx_runtime_and_keeps_fp32_weights(bert_onnx, tmp_path, data_files):
    import onnx
    from transformers import AutoTokenizer

    from modelpress.runtimes.onnxruntime_runner import OnnxRuntimeRunner
    from modelpress.runtimes.openvino_runner import OpenVINORunner, convert_to_ir

    xml = convert_to_ir(bert_onnx.onnx_path, tmp_path / "ir" / "model.xml")
    assert sorted(p.name for p in xml.parent.iterdir()) == ["model.bin", "model.xml"]  # no temporaries left
    weights = sum(np.prod(i.dims) for i in onnx.load(str(bert_onnx.onnx_path)).graph.initializer if i.data_type == 1)
    assert xml.with_suffix(".bin").stat().st_size >= 4 * weights * 0.95  # fp32, not ov.save_model's default fp16
    tok = AutoTokenizer.from_pretrained(str(bert_onnx.model.path))
    feed = _feed(tok, data_files.eval_texts[:3], bert_onnx.result.input_names)  # another batch and length
    ref = _run(OnnxRuntimeRunner, bert_onnx.onnx_path, feed)
    for source in (xml, bert_onnx.onnx_path):  # the IR, and OpenVINO reading the ONNX directly
        np.testing.assert_allclose(_run(OpenVINORunner, source, feed), ref, atol=1e-4)


@needs_openvino
def test_the_ir_of_our_plan_runs_our_calibration(bert_onnx, tmp_path, data_files):
    """The IR written from the run's plan (format "ort" in the bundle) computes what the same plan
    written as Q/DQ computes in ONNX Runtime: OpenVINO's int8 kernels on our ranges."""
    from dataclasses import replace

    from transformers import AutoTokenizer

    from modelpress.calibration_data.feeds import TokenizedFeed
    from modelpress.runtimes.onnxruntime_runner import OnnxRuntimeRunner
    from modelpress.runtimes.openvino_runner import OpenVINORunner, write_openvino_ir
    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.stage import quantize_model
    from modelpress.quantize.static import write_quantized

    tok = AutoTokenizer.from_pretrained(str(bert_onnx.model.path))
    names = bert_onnx.result.input_names
    cal = TokenizedFeed(data_files.calibration_texts, tok, batch_size=16, max_length=32, input_names=names)
    # one node kept fp32, as the accuracy-aware search or nodes_to_exclude would
    cfg = QuantizeConfig(nodes_to_exclude=("encoder.layer.1.output.dense",))
    outcome = quantize_model(bert_onnx.onnx_path, tmp_path / "model.int8.onnx", cal, cfg)
    assert outcome.summary.format == "ort"
    xml = write_openvino_ir(outcome, tmp_path / "model.int8.onnx", tmp_path / "openvino" / "model.xml")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".openvino-")]
    write_quantized(
        replace(outcome.plan, cfg=outcome.plan.cfg.with_(format="qdq")),
        tmp_path / "qdq.onnx",
        keep_fp32=tuple(outcome.summary.fp32_nodes),
    )

    feed = _feed(tok, data_files.eval_texts[5:10], names)
    mask = feed["attention_mask"]
    fp32 = _mean_pool(_run(OnnxRuntimeRunner, bert_onnx.onnx_path, feed), mask)
    ort_q = _mean_pool(_run(OnnxRuntimeRunner, tmp_path / "qdq.onnx", feed), mask)
    ov_q = _mean_pool(_run(OpenVINORunner, xml, feed), mask)
    assert (ov_q * ort_q).sum(1).min() > 0.9995  # the same int8 arithmetic up to rounding
    cos = (ov_q * fp32).sum(1)
    assert 0.99 < cos.min() and cos.mean() < 0.99999  # close to fp32, and really quantized
    import openvino as ov

    ops = list(ov.Core().read_model(str(xml)).get_ops())
    int8_weights = [
        op for op in ops if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() == "i8"
    ]
    fake_quant = [op for op in ops if op.get_type_name() == "FakeQuantize"]
    # every quantized MatMul's weight is an int8 constant; each quantized activation a FakeQuantize
    assert len(int8_weights) == len(outcome.summary.quantized_nodes)
    assert len(fake_quant) == len(
        {t.activation for t in outcome.plan.targets if t.node_name in outcome.summary.quantized_nodes}
    )


@needs_openvino
def test_runner_faults_are_one_line_bad_input(tmp_path):
    from modelpress.runtimes.openvino_runner import OpenVINORunner

    with pytest.raises(BadInputError, match="precision"):
        OpenVINORunner(tmp_path / "m.xml", precision="fp16")
    import onnx
    from onnx import TensorProto, helper

    tiny = tmp_path / "relu.onnx"
    onnx.save(
        helper.make_model(
            helper.make_graph(
                [helper.make_node("Relu", ["x"], ["y"])],
                "g",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
            ),
            opset_imports=[helper.make_opsetid("", 18)],
        ),
        str(tiny),
    )
    with OpenVINORunner(tiny, precision="f32") as r:
        assert r.effective_precision == "f32"
        assert r.run({"x": np.array([-1.0, 2.0], np.float32)})["y"].tolist() == [0.0, 2.0]
    with OpenVINORunner(tiny, precision="bf16") as r:  # bf16 where the CPU has it, else f32
        assert r.effective_precision in ("bf16", "f32")
    with pytest.raises(BadInputError, match="no such"):
        OpenVINORunner(tmp_path / "missing.xml").__enter__()
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(BadInputError, match="OpenVINO cannot load it") as err:
        OpenVINORunner(junk).__enter__()
    assert "\n" not in str(err.value)


def test_without_the_package_a_recipe_asking_for_openvino_fails_first(monkeypatch, tiny_bert, data_files, tmp_path):
    import modelpress.runtimes.openvino_runner as ovr
    from modelpress.pipeline import run_recipe
    from modelpress.recipe import load_recipe

    real = ovr.importlib.import_module
    monkeypatch.setattr(
        ovr.importlib,
        "import_module",
        lambda name, *a: (_ for _ in ()).throw(ImportError(name)) if name == "openvino" else real(name, *a),
    )
    with pytest.raises(BackendUnavailableError, match=r"pip install 'modelpress\[openvino\]'"):
        ovr.require_openvino()
    recipe = write_recipe(
        tmp_path / "r.toml",
        {"name": "ov", "teacher": str(tiny_bert.path)},
        {
            "calibration": {"data": str(data_files.calibration_txt), **FAST_CALIBRATION},
            "validate": {
                "eval_data": str(data_files.pairs_jsonl),
                **FAST_VALIDATE,
                "runtimes": ["onnxruntime", "openvino"],
            },
        },
    )
    with pytest.raises(BackendUnavailableError):
        run_recipe(load_recipe(recipe), tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".ov.lock"]  # nothing was staged


@pytest.mark.parametrize(
    "runtimes, match",
    [
        (
            ["onnxruntime", "tensorrt"],
            "expected one of onnxruntime, openvino, openvino-genai, onnxruntime-genai, got 'tensorrt'",
        ),
        (["openvino", "openvino"], "each runtime once"),
        ([], "validate.runtimes"),
    ],
)
def test_validate_runtimes_is_checked(runtimes, match):
    from modelpress.config_check import check_section
    from modelpress.recipe import ValidateConfig

    with pytest.raises(BadInputError, match=match):
        check_section(ValidateConfig, "validate", {"runtimes": runtimes})
    with pytest.raises(BadInputError, match="openvino_precision"):
        check_section(ValidateConfig, "validate", {"openvino_precision": "fp16"})


@pytest.fixture(scope="module")
def both_runtimes(tiny_bert, data_files, tmp_path_factory):
    """One run whose bundle is built, measured and gated for ONNX Runtime and OpenVINO."""
    from modelpress.pipeline import run_recipe
    from modelpress.recipe import load_recipe

    work = tmp_path_factory.mktemp("run-ov")
    recipe = write_recipe(
        work / "r.toml",
        {"name": "ov", "teacher": str(tiny_bert.path)},
        {
            "task_options": {"normalize": True},
            "calibration": {"data": str(data_files.calibration_txt), **FAST_CALIBRATION},
            "validate": {
                "eval_data": str(data_files.pairs_jsonl),
                **FAST_VALIDATE,
                "runtimes": ["onnxruntime", "openvino"],
            },
            "gate": {"max_drop": 50.0},
        },
    )
    outcome = run_recipe(load_recipe(recipe), work / "out")
    return outcome.bundle, json.loads((outcome.bundle / "report.json").read_text())


@needs_openvino
def test_a_run_builds_measures_and_gates_every_runtime(both_runtimes, data_files):
    from modelpress.bundle import load
    from modelpress.manifest import verify
    from modelpress.validate.gate import gate_report

    root, report = both_runtimes
    meta = json.loads((root / "bundle.json").read_text())
    assert meta["runtimes"] == {"onnxruntime": "model.int8.onnx", "openvino": "openvino/model.xml"}
    manifest = json.loads((root / "manifest.json").read_text())
    assert {"openvino/model.xml", "openvino/model.bin"} <= set(manifest["files"]) and verify(root) == []
    # the plan's fp32 weights lived in a work folder in the staging folder until the IR was written
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]
    # openvino-f32: the fp32 export on OpenVINO, a candidate for the default (validate.select)
    assert list(report["models"]) == ["teacher", "onnx-fp32", "int8", "int8-openvino", "openvino-f32"]
    offered = {c["name"]: (c["runtime"], c["precision"], c["file"]) for c in report["selection"]["candidates"]}
    assert offered == {
        "onnx-fp32": ("onnxruntime", "fp32", "model.onnx"),
        "int8": ("onnxruntime", "int8", "model.int8.onnx"),
        "int8-openvino": ("openvino", "int8", "openvino/model.xml"),
        "openvino-f32": ("openvino", "fp32", "model.onnx"),
    }
    assert report["runtimes"] == {"onnxruntime": "int8", "openvino": "int8-openvino"}
    ov_row = report["models"]["int8-openvino"]
    assert [r["batch_size"] for r in ov_row["latency"]] == [1, 2] and set(report["ratios"]) >= {"int8-openvino"}
    assert ov_row["size_mb"] == round(
        sum((root / "openvino" / f).stat().st_size for f in ("model.xml", "model.bin")) / 2**20, 2
    )
    assert set(report["uncertainty"]) == {"int8", "int8-openvino", "onnx-fp32", "openvino-f32"}
    # the gate judged both and reports the worse one
    drops = {
        n: 100 * (report["models"]["teacher"]["metrics"]["spearman"] - report["models"][n]["metrics"]["spearman"])
        for n in ("int8", "int8-openvino")
    }
    worse = max(drops, key=drops.get)
    assert report["gate"]["candidate_name"] == worse
    assert report["gate"]["drop"] == pytest.approx(drops[worse], abs=2e-3)
    assert gate_report(report).candidate_name == worse  # `modelpress gate` re-judges both too
    # the bundle on either runtime gives the same embeddings (up to int8 rounding)
    texts = list(data_files.eval_texts[:7])
    with load(root) as default:  # the selection's choice (the fp32 ones are timed slower in the tests)
        assert default.name == report["selection"]["chosen"] in ("int8", "int8-openvino")
    with load(root, runtime="onnxruntime") as ort_bundle, load(root, runtime="openvino") as ov_bundle:
        assert (ort_bundle.runtime, ov_bundle.runtime) == ("onnxruntime", "openvino")
        a, b = ort_bundle.embed(texts), ov_bundle.embed(texts)
    assert (a * b).sum(1).min() > 0.999
    assert report["models"]["int8-openvino"]["metrics"]["min_cosine"] > 0.99


def test_a_bundle_without_the_runtime_says_how_to_get_it(tmp_path):
    from modelpress.bundle import bundle_model_file

    assert bundle_model_file({"task": {}}, None) == ("onnxruntime", "model.int8.onnx")  # older bundles
    with pytest.raises(BadInputError, match="no openvino model .*validate.runtimes"):
        bundle_model_file({"runtimes": {"onnxruntime": "model.int8.onnx"}}, "openvino")


@needs_openvino
def test_validate_command_takes_an_openvino_candidate(both_runtimes, tiny_bert, data_files, tmp_path, capsys):
    from modelpress.cli import main

    root, report = both_runtimes
    code = main(
        [
            "-q",
            "validate",
            "--teacher",
            str(tiny_bert.path),
            "--candidate",
            str(root / "openvino" / "model.xml"),
            "--eval-data",
            str(data_files.pairs_jsonl),
            "--out",
            str(tmp_path),
            "--max-drop",
            "50",
            "--batch-sizes",
            "2",
            "--seq-lengths",
            "16",
        ]
    )
    assert code == 0 and "gate PASS: candidate" in capsys.readouterr().out
    again = json.loads((tmp_path / "report.json").read_text())
    assert again["runtimes"] == {"openvino": "candidate"}
    # the same IR, the same eval set: the run's OpenVINO row
    assert again["models"]["candidate"]["metrics"]["spearman"] == pytest.approx(
        report["models"]["int8-openvino"]["metrics"]["spearman"], abs=1e-4
    )
    bad = main(
        [
            "-q",
            "validate",
            "--teacher",
            str(tiny_bert.path),
            "--candidate",
            str(tmp_path / "none.xml"),
            "--eval-data",
            str(data_files.pairs_jsonl),
            "--out",
            str(tmp_path),
        ]
    )
    assert bad == 2
