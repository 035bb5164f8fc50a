"""Runtime-owned artifacts (issue 22, item 2): a runtime that ships in the bundle is its module plus
one registry line; the pipeline names no runtime."""

from __future__ import annotations

import ast
import inspect
import json

from conftest import FAST_CALIBRATION, FAST_VALIDATE, write_recipe

from modelpress import pipeline
from modelpress.runtimes import artifacts as A


class _Sidecar(A.RuntimeArtifact):
    """A made-up runtime: writes a file from the plan, adds a report section, and has validation
    measure the fp32 export once more under a name of its own."""

    runtime = "onnxruntime"
    required = []

    def wanted(self, recipe):
        return True

    def require(self, recipe):
        _Sidecar.required.append(recipe.name)

    def write(self, quant, paths, *, recipe, task):
        (paths.root / "sidecar.txt").write_text(f"{len(quant.summary.quantized_nodes)} int8 nodes\n")
        return {"sidecar": {"nodes": len(quant.summary.quantized_nodes)}}

    def measured(self, paths):
        return [("sidecar-fp32", paths.model_onnx)]


def test_a_registered_artifact_is_required_written_measured_and_reported(tiny_bert, data_files, tmp_path, monkeypatch):
    monkeypatch.setitem(A.ARTIFACTS._entries, "sidecar", _Sidecar)
    recipe = write_recipe(
        tmp_path / "s.toml",
        {"name": "s", "teacher": str(tiny_bert.path)},
        {
            "calibration": {"data": str(data_files.calibration_txt), **FAST_CALIBRATION},
            "validate": {"eval_data": str(data_files.pairs_jsonl), **FAST_VALIDATE},
            "gate": {"max_drop": 50.0},
        },
    )
    from modelpress.recipe import load_recipe

    outcome = pipeline.run_recipe(load_recipe(recipe), tmp_path / "out")
    report = json.loads((outcome.bundle / "report.json").read_text())
    assert _Sidecar.required == ["s"]
    nodes = len(report["quantization"]["quantized_nodes"])
    assert (outcome.bundle / "sidecar.txt").read_text() == f"{nodes} int8 nodes\n" and report["sidecar"] == {
        "nodes": nodes
    }
    # the fp32 export measured twice, under two names: the same numbers
    assert report["models"]["sidecar-fp32"]["metrics"] == report["models"]["onnx-fp32"]["metrics"]
    from modelpress.manifest import verify

    assert verify(outcome.bundle) == []


def test_the_pipeline_names_no_runtime_and_chains_in_few_lines():
    source = inspect.getsource(pipeline)
    for name in (*A.ARTIFACTS.names(), "ort-cuda", ".xml", ".plan"):
        assert name not in source, name
    tree = ast.parse(source)
    chain = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_chain")
    assert chain.end_lineno - chain.lineno + 1 <= 50
    assert all(n.end_lineno - n.lineno + 1 <= 60 for n in tree.body if isinstance(n, ast.FunctionDef))


def test_bundle_runtimes_are_the_registered_ones_with_a_model_file():
    assert A.BUNDLE_RUNTIMES == {
        "onnxruntime": "model.int8.onnx",
        "openvino": "openvino/model.xml",
        "onnxruntime-genai": "model.int8.onnx",  # the pressed file (model.int4.onnx ...), with genai_config.json
        "openvino-genai": "openvino_genai/openvino_model.xml",  # LLMPipeline's folder
    }
    assert set(A.BUNDLE_RUNTIMES) < set(A.ARTIFACTS.names())
    for name in A.ARTIFACTS.names():
        assert A.ARTIFACTS.get(name).runtime == name
