"""Weight-only quantization (``quantize.mode = "weight-only"``: ONNX Runtime's MatMulNBits): the Gemm
rewrite, the graph against an independent blockwise-dequantized reference, and a run to a bundle."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import write_recipe
from onnx import TensorProto, helper, numpy_helper

from modelpress.testing import make_tiny_causal_lm
from modelpress.export.exporters import export_model


def _dequantized(w: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Symmetric blockwise quantize → dequantize of a [K, N] weight, written out here: per block of
    ``block`` rows of a column, the entry of largest magnitude m maps to −2^(bits−1) (scale
    m / −2^(bits−1)), codes round to nearest and clip to 0 … 2^bits − 1 around 2^(bits−1)."""
    k, n = w.shape
    nb = -(-k // block)
    padded = np.zeros((nb * block, n), np.float32)
    padded[:k] = w
    blocks = padded.reshape(nb, block, n)
    peak = np.take_along_axis(blocks, np.abs(blocks).argmax(1)[:, None], 1)[:, 0]
    half = 1 << (bits - 1)
    scale = np.where(peak == 0, 1.0, peak / -half)
    codes = np.clip(np.round(blocks / scale[:, None]) + half, 0, 2 * half - 1)
    return ((codes - half) * scale[:, None]).reshape(nb * block, n)[:k].astype(np.float32)


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def test_plain_gemms_become_matmul_and_bias_with_the_same_result():
    from modelpress.quantize.weight_only import gemms_as_matmuls

    rng = np.random.default_rng(0)
    w_t, b = rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    w, w2 = rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w_t", "b"], ["h"], name="transposed_with_bias", transB=1),
        helper.make_node("Gemm", ["h", "w"], ["g"], name="plain_no_bias"),
        helper.make_node("Gemm", ["g", "w2"], ["y"], name="scaled", alpha=0.5),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(a, name) for a, name in ((w_t, "w_t"), (b, "b"), (w, "w"), (w2, "w2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    rewritten = gemms_as_matmuls(model)
    ops = {n.name: n.op_type for n in rewritten.graph.node}
    assert ops == {
        "transposed_with_bias": "MatMul",
        "transposed_with_bias_bias": "Add",
        "plain_no_bias": "MatMul",
        "scaled": "Gemm",
    }  # alpha ≠ 1 is not what MatMul computes: left alone
    x = rng.standard_normal((3, 5)).astype(np.float32)
    expected = 0.5 * ((x @ w_t.T + b) @ w) @ w2
    np.testing.assert_allclose(_run(rewritten, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_run(model, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def gpt2_graph(tmp_path_factory):
    from modelpress.models import load_model_and_preprocessor
    from modelpress.tasks import configure_task

    folder = make_tiny_causal_lm(tmp_path_factory.mktemp("gpt2"), family="gpt2")
    task = configure_task("text-generation")
    model, tokenizer = load_model_and_preprocessor(str(folder), task)
    result = export_model(task, model, tokenizer, folder / "model.onnx", opset=18, atol=1e-4)
    return folder, model, tokenizer, result


@pytest.mark.parametrize("bits", [8, 4])
def test_weight_only_graph_equals_the_blockwise_dequantized_reference(gpt2_graph, tmp_path, bits):
    from modelpress.kv_cache import KVLayout
    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.targets import fold_weight_transposes
    from modelpress.quantize.tied import tied_tables
    from modelpress.quantize.weight_only import gemms_as_matmuls, quantize_weights_only

    _, model, tokenizer, result = gpt2_graph
    cfg = QuantizeConfig(
        mode="weight-only", weight_bits=bits, block_size=16, head_bits=4, accuracy_level=0, int4_method="rtn"
    )
    summary = quantize_weights_only(result.path, tmp_path / "wo.onnx", cfg)
    assert len(summary.quantized_nodes) == 4 * 2 + 1 and summary.fp32_nodes == ()  # 4 per layer + lm_head
    assert (summary.format, summary.weight_bits, summary.block_size, summary.calibration_method) == (
        "matmulnbits",
        bits,
        16,
        "none",
    )
    quantized = onnx.load(str(tmp_path / "wo.onnx"))
    ops = [n.op_type for n in quantized.graph.node]
    assert ops.count("MatMulNBits") == 9 and "Gemm" not in ops and "DequantizeLinear" not in ops
    # the reference: the same graph with each weight replaced by its dequantized copy (a copy per
    # MatMul: GPT-2's lm_head shares its weight with the embedding), and the tied embedding's table
    # by the head's dequantized weight, transposed (the lookup reads the head's quantized matrix)
    reference = gemms_as_matmuls(onnx.load(result.path))
    inits = {i.name: i for i in reference.graph.initializer}
    tied = tied_tables(fold_weight_transposes(onnx.load(result.path)))
    assert len(tied) == 1 and summary.shared_embeddings == ("node_embedding",)
    for node in reference.graph.node:
        if node.op_type == "Gather" and node.output[0] in tied:
            table = numpy_helper.to_array(inits[node.input[0]])
            name = f"{node.name}_dequantized"
            reference.graph.initializer.append(numpy_helper.from_array(_dequantized(table.T, bits, 16).T, name))
            node.input[0] = name
        if node.op_type == "MatMul" and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]])
            name = f"{node.name}_dequantized"
            reference.graph.initializer.append(numpy_helper.from_array(_dequantized(w, bits, 16), name))
            node.input[1] = name
    layout = KVLayout.from_config(model.config)
    ids = np.array([tokenizer("the old film was very good and the plot")["input_ids"]] * 2, dtype=np.int64)
    feed = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "position_ids": np.arange(ids.shape[1])[None].repeat(2, 0),
        **layout.empty(2),
    }
    got, want, fp32 = _run(quantized, feed)[0], _run(reference, feed)[0], _run(onnx.load(result.path), feed)[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert np.abs(got - fp32).max() > 1e-4  # it did change the weights


def _wo_recipe(tmp_path, folder, quantize=None, validate=None, task="text-generation"):
    from modelpress.testing import random_sentences

    (tmp_path / "corpus.txt").write_text("\n".join(random_sentences(100, seed=1)) + "\n", encoding="utf-8")
    # 60 sentences: 35 windows of 32 tokens every 16, past the 30 a text-generation gate decides on
    (tmp_path / "heldout.txt").write_text("\n".join(random_sentences(60, seed=9)) + "\n", encoding="utf-8")
    body = {
        "calibration": {"data": str(tmp_path / "corpus.txt"), "num_samples": 8, "max_length": 32},
        "quantize": {"mode": "weight-only", **(quantize or {})},
        "validate": {
            "latency_runs": 2,
            "warmup_runs": 1,
            "batch_sizes": [1],
            "seq_lengths": [16],
            "real_workload": False,
            "max_length": 32,
            "threads": 1,
            "eval_data": str(tmp_path / "heldout.txt"),
            **(validate or {}),
        },
        "gate": {"max_drop": 5.0},
    }
    if task == "text-generation":  # its own keys
        body["task_options"] = {"decode_contexts": [24], "stride": 16}
    return write_recipe(tmp_path / "wo.toml", {"name": "wo", "teacher": str(folder), "task": task}, body)


def test_a_weight_only_run_ships_a_bundle_that_generates_and_says_what_it_wrote(gpt2_graph, tmp_path):
    from modelpress.bundle import load
    from modelpress.cli import main
    from modelpress.cli_output import run_result
    from modelpress.triton import write_repository

    folder = gpt2_graph[0]
    assert (
        main(
            [
                "run",
                str(_wo_recipe(tmp_path, folder, {"weight_bits": 8, "block_size": 32})),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    bundle = tmp_path / "out" / "wo"
    report = json.loads((bundle / "report.json").read_text())
    q = report["quantization"]
    assert (q["mode"], q["format"], q["weight_bits"], q["block_size"], q["accuracy_level"]) == (
        "weight-only",
        "matmulnbits",
        8,
        32,
        4,
    )
    assert len(q["quantized_nodes"]) == 9 and report["analysis"]["nodes"] == 0
    # named by what it holds: weight-only 8 bits is "w8" (file, report row, bundle.json, genai config)
    m = report["models"]["w8"]["metrics"]
    assert "int8" not in report["models"]
    assert m["next_token_agreement"] > 0.95 and m["perplexity_ratio"] < 1.01, m
    assert report["gate"]["passed"] and report["gate"]["candidate_name"] == "w8"
    assert (bundle / "model.w8.onnx").is_file() and not (bundle / "model.int8.onnx").exists()
    assert json.loads((bundle / "bundle.json").read_text())["runtimes"] == {"onnxruntime": "model.w8.onnx"}
    assert "model.w8.onnx" in json.loads((bundle / "manifest.json").read_text())["files"]
    genai = json.loads((bundle / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["filename"] == "model.w8.onnx"
    with load(bundle) as lm:
        assert lm.name == "w8"
        assert len(lm.generator.generate_ids([[1, 2, 3]], max_new_tokens=5, stop_token_ids=[])[0]) == 5
    # --json's artifact and the Triton model follow bundle.json, not a fixed file name
    assert run_result(bundle, seconds=1.0, inferred=None)["artifact"]["file"] == "model.w8.onnx"
    served = write_repository(bundle, tmp_path / "repo", name="wo")
    assert (served / "1" / "model.onnx").read_bytes() == (bundle / "model.w8.onnx").read_bytes()
    _loads_in_the_old_layout(bundle, tmp_path / "old")


def _loads_in_the_old_layout(bundle, old):
    """A bundle from before the names followed the precision (weight-only weights in model.int8.onnx,
    bundle.json and the manifest saying so) still loads, and generates what the new one does."""
    from modelpress.bundle import load
    from modelpress.manifest import _file_entry

    shutil.copytree(bundle, old)
    (old / "model.w8.onnx").rename(old / "model.int8.onnx")
    meta = json.loads((old / "bundle.json").read_text())
    meta["runtimes"] = {"onnxruntime": "model.int8.onnx"}
    meta.get("default", {}).update(file="model.int8.onnx", name="int8")
    (old / "bundle.json").write_text(json.dumps(meta))
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["files"]["model.w8.onnx"]
    for name in ("model.int8.onnx", "bundle.json"):
        manifest["files"][name] = _file_entry(old / name)
    (old / "manifest.json").write_text(json.dumps(manifest))
    prompt = [[1, 2, 3]]
    with load(bundle) as new_lm, load(old) as old_lm:
        assert old_lm.name == "int8"  # the name it always had; the file bundle.json lists is what loads
        assert old_lm.runner.model_path.name == "model.int8.onnx"
        got, want = (
            [list(map(int, ids)) for ids in lm.generator.generate_ids(prompt, max_new_tokens=5, stop_token_ids=[])]
            for lm in (old_lm, new_lm)
        )
        assert got == want


@pytest.mark.parametrize(
    "quantize, validate, message",
    [
        ({"weight_bits": 3}, {}, "quantize.weight_bits: expected 8 or 4, got 3"),
        ({"block_size": 48}, {}, "quantize.block_size: expected one of 16, 32, 64, 128, 256, got 48"),
        ({"calibration_seeds": 2}, {}, 'quantize.calibration_seeds: "weight-only" reads no calibration data'),
        ({"preset": "tensorrt"}, {}, 'quantize.mode = "weight-only" writes ONNX Runtime\'s MatMulNBits; TensorRT'),
        ({}, {"runtimes": ["onnxruntime", "openvino"]}, 'validate.runtimes: quantize.mode = "weight-only"'),
    ],
)
def test_weight_only_settings_it_cannot_honour_are_refused_at_load(tmp_path, quantize, validate, message):
    from modelpress.errors import BadInputError
    from modelpress.recipe import load_recipe

    # an encoder task (whose recipe takes OpenVINO otherwise)
    with pytest.raises(BadInputError) as err:
        load_recipe(_wo_recipe(tmp_path, tmp_path, quantize, validate, task="feature-extraction"))
    assert str(err.value).startswith(message), str(err.value)


def test_weight_only_keeps_the_nodes_to_exclude_fp32_by_module_path_as_static_does(gpt2_graph, tmp_path):
    from modelpress.errors import BadInputError
    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.weight_only import quantize_weights_only

    path = gpt2_graph[3].path
    summary = quantize_weights_only(
        path,
        tmp_path / "wo.onnx",
        QuantizeConfig(mode="weight-only", nodes_to_exclude=("lm_head", "transformer.h.1.mlp")),
    )
    assert len(summary.quantized_nodes) == 9 - 1 - 2 and len(summary.fp32_nodes) == 3  # the head; c_fc, c_proj
    ops = [n.op_type for n in onnx.load(str(tmp_path / "wo.onnx")).graph.node]
    assert ops.count("MatMulNBits") == 6 and ops.count("MatMul") >= 3
    with pytest.raises(BadInputError, match="quantize.nodes_to_exclude: no node or module named nowhere"):
        quantize_weights_only(
            path, tmp_path / "x.onnx", QuantizeConfig(mode="weight-only", nodes_to_exclude=("nowhere",))
        )


def test_a_graph_without_a_constant_weight_matmul_is_refused_not_shipped_as_int8(tmp_path):
    from modelpress.errors import BadInputError
    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.weight_only import quantize_weights_only

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"], name="add")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "m.onnx"))
    with pytest.raises(BadInputError, match="no MatMul/Gemm node with a constant weight for weight-only"):
        quantize_weights_only(tmp_path / "m.onnx", tmp_path / "out.onnx", QuantizeConfig(mode="weight-only"))
    assert not (tmp_path / "out.onnx").exists()
