"""The CLI end to end in subprocesses, on the tiny models: ``run`` (feature extraction and text
classification) judged by its exit code and its files, ``gate``, bad input (exit 2, one line, no
traceback, no bundle), the single-stage ``export`` / ``quantize`` / ``validate`` commands, and the
bundle's Python API against a hand-run ONNX session."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST_CALIBRATION, FAST_VALIDATE, NUM_LABELS, cli, write_recipe
from scipy.stats import spearmanr

from modelpress.errors import BadInputError
from modelpress.manifest import verify

MODEL_KEYS = {"metrics", "latency", "real_workload", "size_mb", "peak_rss_growth_mb"}
GATE_KEYS = {
    "metric",
    "teacher",
    "candidate",
    "drop",
    "max_drop",
    "passed",
    "candidate_name",
    "policy",
    "n",
    "unit",
    "drop_ci95",
    "method",
    "mcnemar_p",
    "note",
    "latency_shape",
    "latency_ratio",
    "max_latency_ratio",
    "latency_ratio_ci95",
    "latency_reference",
    "choice",
}
REPORT_KEYS = {"schema", "name", "task", "task_config", "eval", "models", "ratios", "gate", "export", "quantization"}
BUNDLE_FILES = {
    "model.onnx",
    "model.int8.onnx",
    "tokenizer",
    "report.json",
    "report.md",
    "manifest.json",
    "quantization.json",
    "bundle.json",
    "config.json",
    "recipe.toml",
}


def _explain(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def _error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("modelpress: error:")]


class Run:
    def __init__(self, proc, out: Path, name: str, recipe: Path):
        self.proc, self.out, self.root, self.recipe = proc, out, out / name, recipe

    @property
    def report(self) -> dict:
        return json.loads((self.root / "report.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tiny_run(tiny_bert, data_files, tmp_path_factory) -> Run:
    work = tmp_path_factory.mktemp("run-fe")
    recipe = write_recipe(
        work / "tiny.toml",
        {"name": "tiny", "teacher": str(tiny_bert.path)},
        {
            "task_options": {"normalize": True},
            "calibration": {"data": str(data_files.calibration_txt), **FAST_CALIBRATION},
            "validate": {"eval_data": str(data_files.pairs_jsonl), **FAST_VALIDATE},
            "gate": {"max_drop": 50.0},
        },
    )
    proc = cli("run", recipe, "--out", work / "out")
    return Run(proc, work / "out", "tiny", recipe)


@pytest.fixture(scope="module")
def cls_run(tiny_bert_cls, data_files, tmp_path_factory) -> Run:
    work = tmp_path_factory.mktemp("run-cls")
    recipe = write_recipe(
        work / "cls.toml",
        {"name": "cls", "teacher": str(tiny_bert_cls.path), "task": "text-classification"},
        {
            "calibration": {"data": str(data_files.calibration_txt), **FAST_CALIBRATION},
            "validate": {"eval_data": str(data_files.labelled_jsonl), **FAST_VALIDATE},
            # KL(teacher || int8) is > 0 for any int8 model: gated with no slack, the run must fail the gate
            "gate": {"metric": "mean_kl", "max_drop": 0.0},
        },
    )
    proc = cli("run", recipe, "--out", work / "out")
    return Run(proc, work / "out", "cls.rejected", recipe)  # a failed gate publishes beside <name>, never as it


# -- run: feature extraction ------------------------------------------------------------------------------
def test_run_exits_0_and_publishes_a_complete_bundle(tiny_run):
    assert tiny_run.proc.returncode == 0, _explain(tiny_run.proc)
    assert f"bundle: {tiny_run.root}" in tiny_run.proc.stdout
    assert "gate PASS" in tiny_run.proc.stdout
    assert "Traceback" not in tiny_run.proc.stderr
    assert BUNDLE_FILES <= {p.name for p in tiny_run.root.iterdir()}
    assert (tiny_run.root / "tokenizer").is_dir() and any((tiny_run.root / "tokenizer").iterdir())
    # staged in .tiny.partial-<pid>-<random> and renamed: nothing but the bundle's lock is left beside it
    assert sorted(p.name for p in tiny_run.out.iterdir()) == [".tiny.lock", "tiny"]
    assert not list(tiny_run.root.rglob("*.partial"))
    assert (tiny_run.root / "recipe.toml").read_bytes() == tiny_run.recipe.read_bytes()


def test_report_json_has_the_documented_keys(tiny_run, data_files):
    assert tiny_run.proc.returncode == 0, _explain(tiny_run.proc)
    r = tiny_run.report
    assert REPORT_KEYS <= set(r)
    assert (r["schema"], r["name"], r["task"]) == (2, "tiny", "feature-extraction")
    assert r["task_config"] == {"task": "feature-extraction", "pooling": "mean", "normalize": True}
    assert r["eval"] == {
        "source": str(data_files.pairs_jsonl),
        "format": "pairs",
        "num_examples": 60,
        "num_texts": 60,
        "num_pairs": 30,
        "num_words": 0,
        "has_labels": False,
        "skipped": 0,
    }
    assert list(r["models"]) == ["teacher", "onnx-fp32", "int8"]
    for name, m in r["models"].items():
        assert MODEL_KEYS <= set(m), name
        assert set(m["metrics"]) == {"mean_cosine", "min_cosine", "nn_agreement", "spearman"}
        assert [(row["batch_size"], row["seq_len"], row["runs"]) for row in m["latency"]] == [(1, 16, 2), (2, 16, 2)]
        assert all(row["p50_ms"] > 0 for row in m["latency"])
        assert m["real_workload"] is None  # validate.real_workload = false
    assert r["models"]["teacher"]["size_mb"] is None
    for name, file in (("onnx-fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        assert r["models"][name]["size_mb"] == round((tiny_run.root / file).stat().st_size / 2**20, 2)
    assert set(r["ratios"]) == {"onnx-fp32", "int8"}
    assert set(r["ratios"]["int8"]) == {"b1xs16_p50", "b2xs16_p50"}
    g = r["gate"]
    assert set(g) == GATE_KEYS and g["candidate_name"] == "int8" and g["metric"] == "spearman"
    assert g["max_drop"] == 50.0 and g["passed"] is True
    assert g["drop"] == pytest.approx(g["teacher"] - g["candidate"], abs=2e-4)
    assert g["teacher"] == pytest.approx(100 * r["models"]["teacher"]["metrics"]["spearman"], abs=1e-3)
    assert g["n"] == 30 and g["unit"] == "pairs" and g["drop_ci95"][0] <= g["drop"] <= g["drop_ci95"][1]
    assert g["policy"] == "point" and "95% paired bootstrap" in g["method"]
    assert set(r["uncertainty"]["int8"]) == {"mean_cosine", "nn_agreement", "spearman"}
    e = r["export"]
    assert e["opset"] == 18 and e["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert e["parity_max_abs_diff"] < 1e-4 and e["parity_batch_shape"] == [3, 23]
    q = r["quantization"]
    assert "tensors" not in q and q["preset"] == "onnxruntime" and q["calibration_method"] == "minmax"
    assert len(q["quantized_nodes"]) == 12 and len(q["fp32_nodes"]) == 4
    side = json.loads((tiny_run.root / "quantization.json").read_text())
    assert len(side["tensors"]) == 8 and side["quantized_nodes"] == q["quantized_nodes"]
    assert "Gate: **PASS**" in (tiny_run.root / "report.md").read_text()


def test_report_metrics_match_a_reference_computed_here(tiny_run, tiny_bert, data_files):
    """The teacher's Spearman from torch + scipy here; the int8 cosine from the bundle's own model."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from modelpress.bundle import load

    assert tiny_run.proc.returncode == 0, _explain(tiny_run.proc)
    r = tiny_run.report
    rows = [json.loads(line) for line in data_files.pairs_jsonl.read_text().splitlines()]
    texts = list(dict.fromkeys(t for row in rows for t in (row["sentence1"], row["sentence2"])))
    tok = AutoTokenizer.from_pretrained(str(tiny_bert.path))
    model = AutoModel.from_pretrained(str(tiny_bert.path)).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state.numpy()
    mask = enc["attention_mask"].numpy()[..., None]
    teacher = (hidden * mask).sum(1) / mask.sum(1)
    teacher /= np.linalg.norm(teacher, axis=1, keepdims=True)
    index = {t: i for i, t in enumerate(texts)}
    sims = [teacher[index[row["sentence1"]]] @ teacher[index[row["sentence2"]]] for row in rows]
    rho = spearmanr(sims, [row["score"] for row in rows]).statistic
    assert r["models"]["teacher"]["metrics"]["spearman"] == pytest.approx(rho, abs=1e-5)

    with load(tiny_run.root) as bundle:
        int8 = bundle.embed(texts)
    cos = (teacher * int8).sum(1)
    m = r["models"]["int8"]["metrics"]
    assert m["mean_cosine"] == pytest.approx(cos.mean(), abs=1e-5)
    assert m["min_cosine"] == pytest.approx(cos.min(), abs=1e-5)
    assert 0.995 < m["min_cosine"] < 1.0  # int8 is close, and not identical
    assert r["models"]["onnx-fp32"]["metrics"]["min_cosine"] > 0.99999


def test_manifest_checksums_match_the_files(tiny_run):
    assert tiny_run.proc.returncode == 0, _explain(tiny_run.proc)
    root = tiny_run.root
    manifest = json.loads((root / "manifest.json").read_text())
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert set(manifest["files"]) == on_disk
    for rel, info in manifest["files"].items():
        data = (root / rel).read_bytes()
        assert info == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}, rel
    assert verify(root) == []
    assert manifest["verdict"] == "pass" and manifest["gate"] == tiny_run.report["gate"]
    assert manifest["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest["recipe"]["name"] == "tiny" and manifest["recipe"]["validate"]["batch_sizes"] == [1, 2]
    assert set(manifest["metrics"]) == {"teacher", "onnx-fp32", "int8"}


def test_gate_subcommand_rejudges_the_run(tiny_run):
    assert tiny_run.proc.returncode == 0, _explain(tiny_run.proc)
    r = tiny_run.report
    same = cli("gate", tiny_run.root)
    assert same.returncode == 0 and same.stdout.strip().startswith("gate PASS"), _explain(same)
    assert cli("gate", tiny_run.root, "--max-drop", "100").returncode == 0
    # a metric the int8 model measurably lost, and a threshold below that loss → exit 3
    candidates = [r["gate"]["metric"], "min_cosine", "mean_cosine"]
    drops = {m: 100 * (r["models"]["teacher"]["metrics"][m] - r["models"]["int8"]["metrics"][m]) for m in candidates}
    metric = next(m for m in candidates if drops[m] > 1e-3)
    fail = cli("gate", tiny_run.root, "--metric", metric, "--max-drop", f"{drops[metric] / 2:.6f}")
    assert fail.returncode == 3, _explain(fail)
    assert fail.stdout.startswith("gate FAIL") and metric in fail.stdout
    ok = cli("gate", tiny_run.root, "--metric", metric, "--max-drop", f"{drops[metric] * 2:.6f}")
    assert ok.returncode == 0, _explain(ok)
    bad = cli("gate", tiny_run.root, "--metric", "accuracy")
    assert bad.returncode == 2 and len(_error_lines(bad)) == 1 and "Traceback" not in bad.stderr


def test_bundle_embed_equals_a_hand_run_int8_session(tiny_run, data_files):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from modelpress.bundle import load

    assert tiny_run.proc.returncode == 0, _explain(tiny_run.proc)
    texts = list(data_files.eval_texts)
    with load(tiny_run.root) as bundle:
        got = bundle.embed(texts, batch_size=7)
        with pytest.raises(BadInputError, match="use embed"):
            bundle.classify(texts[:2])
        # a string is one text, not a list of characters
        one = bundle.embed(texts[0])
    assert one.shape == (1, 32)
    assert got.shape == (len(texts), 32) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)

    tok = AutoTokenizer.from_pretrained(str(tiny_run.root / "tokenizer"))
    session = ort.InferenceSession(str(tiny_run.root / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    enc = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="np")
    feed = {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()}
    hidden = session.run(None, feed)[0]
    mask = feed["attention_mask"][..., None].astype(np.float32)
    manual = (hidden * mask).sum(1) / mask.sum(1)
    manual /= np.linalg.norm(manual, axis=1, keepdims=True)
    np.testing.assert_allclose(got, manual, atol=1e-5)
    np.testing.assert_allclose(one[0], manual[0], atol=1e-5)
    with pytest.raises(BadInputError, match="not a modelpress bundle"):
        load(tiny_run.out)


# -- run: text classification -----------------------------------------------------------------------------
def test_text_classification_run_reports_accuracy_agreement_and_kl(cls_run, tiny_bert_cls, data_files):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # exit 3: the gate failed, yet the bundle and its report are written to cls.rejected, with verdict "fail"
    assert cls_run.proc.returncode == 3, _explain(cls_run.proc)
    assert "gate FAIL" in cls_run.proc.stdout and "Traceback" not in cls_run.proc.stderr
    assert f"rejected: {cls_run.root}" in cls_run.proc.stdout and not (cls_run.out / "cls").exists()
    assert BUNDLE_FILES <= {p.name for p in cls_run.root.iterdir()} and verify(cls_run.root) == []
    assert json.loads((cls_run.root / "manifest.json").read_text())["verdict"] == "fail"
    r = cls_run.report
    assert r["task_config"] == {"task": "text-classification"} and r["eval"]["has_labels"] is True
    for name in ("onnx-fp32", "int8"):
        m = r["models"][name]["metrics"]
        assert set(m) == {"accuracy", "top1_agreement", "mean_kl"}
        assert 0.0 <= m["mean_kl"] < 0.05 and m["top1_agreement"] >= 0.9
    assert r["models"]["int8"]["metrics"]["mean_kl"] > 0
    assert r["models"]["teacher"]["metrics"]["top1_agreement"] == 1.0
    assert r["models"]["teacher"]["metrics"]["mean_kl"] == 0.0
    g = r["gate"]
    assert (g["metric"], g["max_drop"], g["passed"]) == ("mean_kl", 0.0, False)
    # lower is better for KL: the drop is candidate - teacher, positive
    assert g["drop"] == pytest.approx(100 * r["models"]["int8"]["metrics"]["mean_kl"], abs=1e-4) and g["drop"] > 0
    # re-gated on accuracy (the default metric with labels) it passes
    regate = cli("gate", cls_run.root, "--metric", "accuracy", "--max-drop", "100")
    assert regate.returncode == 0 and "accuracy" in regate.stdout, _explain(regate)

    labels = [json.loads(line)["label"] for line in data_files.labelled_jsonl.read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(str(tiny_bert_cls.path))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert_cls.path)).eval()
    with torch.no_grad():
        logits = model(
            **tok(list(data_files.eval_texts), padding=True, truncation=True, max_length=32, return_tensors="pt")
        ).logits.numpy()
    assert r["models"]["teacher"]["metrics"]["accuracy"] == pytest.approx(
        float((logits.argmax(1) == np.array(labels)).mean()), abs=1e-6
    )

    from modelpress.bundle import load

    with pytest.raises(BadInputError, match="the gate failed this bundle"):
        load(cls_run.root)
    with load(cls_run.root, allow_failed=True) as bundle:
        probs = bundle.classify(list(data_files.eval_texts))
        with pytest.raises(BadInputError, match="use classify"):
            bundle.embed(["a dog"])
    assert probs.shape == (len(labels), NUM_LABELS)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert r["models"]["int8"]["metrics"]["accuracy"] == pytest.approx(
        float((probs.argmax(1) == np.array(labels)).mean()), abs=1e-6
    )


# -- bad input --------------------------------------------------------------------------------------------
def _bad_recipe(kind: str, work: Path, tiny_bert, data_files) -> tuple[list[str], str, bool]:
    """(CLI args, expected text in the error, whether stderr must be that one line only)."""
    cal = {"data": str(data_files.calibration_txt), **FAST_CALIBRATION}
    val = {"eval_data": str(data_files.pairs_jsonl), **FAST_VALIDATE}
    top = {"name": "bad", "teacher": str(tiny_bert.path)}
    recipe = work / "bad.toml"
    if kind == "missing recipe":
        return ["run", str(work / "absent.toml")], "recipe file not found", True
    if kind == "unknown key":
        write_recipe(recipe, top, {"calibration": cal, "validate": val, "quantize": {"bogus": 1}})
        return ["run", str(recipe)], "quantize.bogus", True
    if kind == "unknown --set key":
        write_recipe(recipe, top, {"calibration": cal, "validate": val})
        return ["run", str(recipe), "--set", "validate.bogus=3"], "validate.bogus", True
    if kind == "missing calibration file":
        write_recipe(recipe, top, {"calibration": {**cal, "data": str(work / "absent.txt")}, "validate": val})
        return ["-q", "run", str(recipe)], "absent.txt", False
    if kind == "empty calibration file":
        (work / "empty.txt").write_text("", encoding="utf-8")
        write_recipe(recipe, top, {"calibration": {**cal, "data": str(work / "empty.txt")}, "validate": val})
        return ["-q", "run", str(recipe)], "contains no records", False
    if kind == "teacher without config.json":
        (work / "not-a-model").mkdir()
        (work / "not-a-model" / "vocab.txt").write_text("[PAD]\n", encoding="utf-8")
        write_recipe(recipe, {**top, "teacher": str(work / "not-a-model")}, {"calibration": cal, "validate": val})
        return ["run", str(recipe)], "holds no config.json", True
    if kind == "a model without the task's head":
        # transformers would initialise a random classifier: teacher and int8 would agree on nonsense
        write_recipe(recipe, {**top, "task": "text-classification"}, {"calibration": cal, "validate": val})
        return ["run", str(recipe)], "has no trained weights for classifier.bias, classifier.weight", False
    if kind == "a security switch given as a string":
        write_recipe(recipe, {**top, "trust_remote_code": "false"}, {"calibration": cal, "validate": val})
        return ["run", str(recipe)], "trust_remote_code: expected true or false", True
    if kind == "a --set switch given as a word":
        write_recipe(recipe, top, {"calibration": cal, "validate": val})
        return ["run", str(recipe), "--set", "trust_remote_code=no"], "trust_remote_code: expected true or false", True
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "missing recipe",
        "unknown key",
        "unknown --set key",
        "missing calibration file",
        "empty calibration file",
        "teacher without config.json",
        "a model without the task's head",
        "a security switch given as a string",
        "a --set switch given as a word",
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_bundle(kind, tmp_path, tiny_bert, data_files):
    args, expected, only_line = _bad_recipe(kind, tmp_path, tiny_bert, data_files)
    out = tmp_path / "out"
    proc = cli(*args, "--out", str(out))
    assert proc.returncode == 2, _explain(proc)
    assert "Traceback" not in proc.stderr, _explain(proc)
    errors = _error_lines(proc)
    assert len(errors) == 1 and expected in errors[0], _explain(proc)
    assert proc.stderr.strip().splitlines()[-1] == errors[0]
    if only_line:
        assert proc.stderr.strip() == errors[0], _explain(proc)
    assert not (out / "bad").exists()
    assert proc.stdout == ""


def test_usage_errors_exit_2(tmp_path):
    for args in ([], ["frobnicate"], ["quantize", "x.onnx"], ["run"]):
        proc = cli(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, _explain(proc))
    proc = cli("gate", tmp_path)
    assert proc.returncode == 2 and _error_lines(proc) == [proc.stderr.strip()] and "no report.json" in proc.stderr
    proc = cli("quantize", tmp_path / "absent.onnx", "--tokenizer", "x", "--data", "y", "--out", tmp_path / "o.onnx")
    assert proc.returncode == 2 and "ONNX model not found" in proc.stderr and "Traceback" not in proc.stderr


# -- single-stage commands on the tiny model's files --------------------------------------------------------
@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    return tmp_path_factory.mktemp("stages")


@pytest.fixture(scope="module")
def cli_export(tiny_bert, stages):
    proc = cli("export", tiny_bert.path, "--out", stages / "model.onnx")
    return proc, stages / "model.onnx"


@pytest.fixture(scope="module")
def cli_quantize(cli_export, tiny_bert, data_files, stages):
    proc = cli(
        "quantize",
        cli_export[1],
        "--tokenizer",
        tiny_bert.path,
        "--data",
        data_files.calibration_txt,
        "--out",
        stages / "model.int8.onnx",
        "--num-samples",
        "48",
        "--max-length",
        "32",
        "--method",
        "percentile",
        "--percentile",
        "99.9",
    )
    return proc, stages / "model.int8.onnx"


def test_export_command(cli_export):
    import onnx

    proc, path = cli_export
    assert proc.returncode == 0, _explain(proc)
    assert f"onnx: {path}" in proc.stdout and "inputs input_ids, attention_mask, token_type_ids" in proc.stdout
    assert "3x23 batch" in proc.stdout
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert not path.with_name(path.name + ".partial").exists()


def test_quantize_command(cli_quantize):
    proc, path = cli_quantize
    assert proc.returncode == 0, _explain(proc)
    assert path.is_file() and "12 nodes int8, 4 fp32" in proc.stdout
    side = json.loads(path.with_suffix(".quantization.json").read_text())
    assert side["calibration_method"] == "percentile" and len(side["quantized_nodes"]) == 12
    assert len(side["tensors"]) == 8 and any(t["clipped"] > 0 for t in side["tensors"])


def test_validate_command(cli_quantize, tiny_bert, data_files, stages):
    out = stages / "validation"
    # 12 STS-B pairs are fewer than the 30 a feature-extraction gate decides on (issue 21): exit 3 and
    # "too small to decide", whatever the drop
    proc = cli(
        "validate",
        "--teacher",
        tiny_bert.path,
        "--candidate",
        cli_quantize[1],
        "--eval-data",
        data_files.stsb_tsv,
        "--out",
        out,
        "--batch-sizes",
        "1",
        "--seq-lengths",
        "16",
        "--max-drop",
        "0",
    )
    assert proc.returncode == 3, _explain(proc)
    assert f"report: {out / 'report.json'}" in proc.stdout
    r = json.loads((out / "report.json").read_text())
    assert not r["gate"]["passed"] and "gate FAIL" in proc.stdout
    assert "too small to decide: n=12 pairs, need ≥ 30" in proc.stdout and r["gate"]["note"] in proc.stdout
    assert r["eval"]["format"] == "stsb" and r["eval"]["num_pairs"] == 12
    assert list(r["models"]) == ["teacher", "candidate"]
    assert r["gate"]["candidate_name"] == "candidate" and r["gate"]["metric"] == "spearman"
    assert r["gate"]["max_drop"] == 0.0
    assert r["models"]["candidate"]["metrics"]["mean_cosine"] > 0.999
    assert r["models"]["candidate"]["size_mb"] == round(cli_quantize[1].stat().st_size / 2**20, 2)
    assert (out / "report.md").is_file()


# -- run with a distillation stage --------------------------------------------------------------------------
def test_run_with_distillation_reports_the_subset_it_started_from(data_files, tmp_path):
    """The report's ``untrained-subset-fp32`` row is the subset distillation actually kept (chosen by
    ``layer_selection = "agreement"``), not the evenly spaced one (a bug this test caught)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from modelpress.tasks.feature_extraction import pool
    from modelpress.distill.student import build_layer_subset
    from modelpress.testing import make_teacher
    from modelpress.tasks.evalsets import load_eval_set

    teacher_dir = make_teacher(tmp_path / "teacher", num_layers=4, initializer_range=0.3, seed=2)
    recipe = write_recipe(
        tmp_path / "d.toml",
        {"name": "d", "teacher": str(teacher_dir)},
        {
            "distill": {
                "data": str(data_files.calibration_txt),
                "num_layers": 2,
                "max_steps": 3,
                "batch_size": 8,
                "eval_fraction": 0.2,
            },
            "calibration": {"data": str(data_files.calibration_txt), **FAST_CALIBRATION},
            "validate": {"eval_data": str(data_files.pairs_jsonl), **FAST_VALIDATE},
            "gate": {"max_drop": 100.0},
        },
    )
    proc = cli("run", recipe, "--out", tmp_path / "out")
    assert proc.returncode == 0, _explain(proc)
    root = tmp_path / "out" / "d"
    report = json.loads((root / "report.json").read_text(encoding="utf-8"))
    assert list(report["models"]) == ["teacher", "untrained-subset-fp32", "student-onnx-fp32", "int8"]
    kept = json.loads((root / "student" / "distill.json").read_text(encoding="utf-8"))["kept_layers"]
    assert kept != [0, 2]  # agreement chose other layers than the evenly spaced ones on this teacher

    texts = list(load_eval_set(data_files.pairs_jsonl).texts)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModel.from_pretrained(teacher_dir).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=FAST_VALIDATE["max_length"], return_tensors="pt")
    with torch.no_grad():

        def embed(model):
            return pool(model(**batch).last_hidden_state, batch["attention_mask"], pooling="mean", normalize=True)

        cos = (embed(teacher) * embed(build_layer_subset(teacher, kept).eval())).sum(-1).mean().item()
    row = report["models"]["untrained-subset-fp32"]["metrics"]
    assert row["mean_cosine"] == pytest.approx(cos, abs=1e-4)


# -- the bundle proves itself -----------------------------------------------------------------------------
def test_gate_and_load_refuse_a_bundle_that_is_not_what_its_manifest_says(tiny_run, tmp_path):
    import shutil

    from modelpress.bundle import load
    from modelpress.manifest import verify

    assert tiny_run.proc.returncode == 0, _explain(tiny_run.proc)
    assert verify(str(tiny_run.root)) == []  # a str works as well as a Path
    edited = tmp_path / "edited"
    shutil.copytree(tiny_run.root, edited)
    report = json.loads((edited / "report.json").read_text())
    report["models"]["int8"]["metrics"]["spearman"] = 0.99  # a hand-edited report
    (edited / "report.json").write_text(json.dumps(report))
    proc = cli("gate", edited)
    assert proc.returncode == 2 and "does not match its manifest.json (report.json" in proc.stderr, _explain(proc)
    with pytest.raises(BadInputError, match="does not match its manifest"):
        load(edited)
    added = tmp_path / "added"
    shutil.copytree(tiny_run.root, added)
    (added / "stray.bin").write_bytes(b"x")
    (added / "model.plan").write_bytes(b"an engine built later")
    assert verify(added) == ["+model.plan", "+stray.bin"]
    assert verify(added, allow_later=True) == ["+stray.bin"]  # what `modelpress engine` adds is fine
    manifest = json.loads((added / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "bytes": 1}
    (added / "manifest.json").write_text(json.dumps(manifest))
    assert "!../../etc/passwd" in verify(added)
    proc = cli("gate", tiny_run.root, "--max-drop", "-1")
    assert proc.returncode == 2 and "gate.max_drop: expected >= 0" in proc.stderr, _explain(proc)


def test_a_second_run_into_the_same_bundle_exits_2_and_the_first_publishes_intact(
    tiny_bert, tiny_distilbert, data_files, tmp_path
):
    """Two runs of one name into one --out: the lock lets one publish; the other exits 2 at once,
    and every file of the bundle is the publishing run's (its manifest says so)."""
    import os
    import subprocess
    import sys
    import time

    from conftest import REPO

    from modelpress.manifest import verify

    sections = {
        "calibration": {"data": str(data_files.calibration_txt), **FAST_CALIBRATION},
        "validate": {"eval_data": str(data_files.pairs_jsonl), **FAST_VALIDATE},
        "gate": {"max_drop": 50.0},
    }
    a = write_recipe(tmp_path / "a.toml", {"name": "same", "teacher": str(tiny_bert.path)}, sections)
    b = write_recipe(tmp_path / "b.toml", {"name": "same", "teacher": str(tiny_distilbert.path)}, sections)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(
        [sys.executable, "-m", "modelpress", "run", str(a), "--out", str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not list(out.glob(".same.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    second = cli("run", b, "--out", out)
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    assert second.returncode == 2 and "another modelpress run is writing this bundle" in second.stderr, _explain(second)
    assert verify(out / "same") == []
    manifest = json.loads((out / "same" / "manifest.json").read_text())
    assert manifest["recipe"]["teacher"] == str(tiny_bert.path)
    assert json.loads((out / "same" / "config.json").read_text())["model_type"] == "bert"
