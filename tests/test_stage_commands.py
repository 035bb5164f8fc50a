"""One pipeline (issue 22, item 3): ``modelpress export | quantize | validate --recipe`` run the same
stage functions as ``modelpress run``, so every recipe key means the same everywhere. On a tiny
BERT recipe the commands ``make export quantize validate`` runs (read from a dry run of make, run
in process) write the same ``model.int8.onnx`` bytes into the stage folder and reach the same
verdict as ``run`` (static, weight-only, auto, ``calibration_seeds = 2``); each key the stage
commands used to drop without a word is honoured (or refused in one line). Every test here failed
before the stage commands ran the pipeline's stage functions."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST_CALIBRATION, FAST_VALIDATE, REPO, write_recipe

from modelpress.cli import main

#: what a verdict is: the gate's decision and what it was decided on
VERDICT = (
    "passed",
    "metric",
    "teacher",
    "candidate",
    "drop",
    "max_drop",
    "policy",
    "candidate_name",
    "n",
    "unit",
    "drop_ci95",
    "note",
)


def _recipe(path: Path, teacher: Path, data_files, *, top=None, **sections) -> Path:
    base = {
        "task_options": {"normalize": True},
        "calibration": {"data": str(data_files.calibration_txt), **FAST_CALIBRATION},
        "validate": {"eval_data": str(data_files.pairs_jsonl), **FAST_VALIDATE},
        "gate": {"max_drop": 50.0},
    }
    for name, values in sections.items():  # None drops a section
        base[name] = None if values is None else {**base.get(name, {}), **values}
    return write_recipe(
        path, {"name": "eq", "teacher": str(teacher), **(top or {})}, {k: v for k, v in base.items() if v is not None}
    )


def _main(capsys, *args) -> int:
    code = main(["-q", *map(str, args)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(capsys, recipe: Path, out: Path, *extra) -> tuple[int, Path]:
    code = _main(capsys, "run", recipe, "--out", out, *extra)
    bundle = out / "eq" if (out / "eq").is_dir() else out / "eq.rejected"
    return code, bundle


def _make_commands(recipe: Path, stage: Path) -> dict[str, list[str]]:
    """What `make export quantize validate RECIPE=… STAGE_DIR=…` runs (a dry run: the commands, each
    then run here in process, without three more interpreter starts)."""
    venv = Path(sys.executable).parent.parent
    # -o: the environment running the tests is set up; make must not reinstall it
    dry = subprocess.run(
        [
            "make",
            "-s",
            "-n",
            "-C",
            str(REPO),
            f"RECIPE={recipe}",
            f"STAGE_DIR={stage}",
            f"PY={sys.executable}",
            f"VENV={venv}",
            "-o",
            f"{venv}/.installed",
            "export",
            "quantize",
            "validate",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    commands = [shlex.split(line) for line in dry.stdout.splitlines() if line.strip()]
    assert [c[:4] for c in commands] == [
        [sys.executable, "-m", "modelpress", t] for t in ("export", "quantize", "validate")
    ]
    return {c[3]: c[3:] for c in commands}


def _stages(capsys, recipe: Path, stage: Path, *, quantize=(), validate=()) -> int:
    """`make export quantize validate` of ``recipe`` into ``stage``; the validate stage's exit code."""
    make = _make_commands(recipe, stage)
    assert _main(capsys, *make["export"]) == 0
    assert _main(capsys, *make["quantize"], *quantize) == 0
    return _main(capsys, *make["validate"], *validate)


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


def _verdict(report: dict) -> dict:
    return {k: report["gate"][k] for k in VERDICT}


def _same_as_run(capsys, recipe: Path, tmp_path: Path, *, pressed: str = "model.int8.onnx") -> tuple[dict, dict]:
    """Stage commands and `run` of one recipe: the same int8 bytes, exit code and verdict. ``pressed``:
    the bundle's name of the file the stages write as model.int8.onnx (the Makefile's fixed name)."""
    stage = tmp_path / "eq.stages"
    code = _stages(capsys, recipe, stage)
    run_code, bundle = _run(capsys, recipe, tmp_path / "out")
    assert code == run_code
    assert _sha(stage / "model.onnx") == _sha(bundle / "model.onnx")
    assert _sha(stage / "model.int8.onnx") == _sha(bundle / pressed)
    staged, ran = _report(stage), _report(bundle)
    assert _verdict(staged) == _verdict(ran)
    assert staged["models"]["teacher"]["metrics"] == ran["models"]["teacher"]["metrics"]
    return staged, ran


# -- the same bytes and the same verdict as run ----------------------------------------------------
def test_static_stages_equal_run(capsys, tiny_bert, data_files, tmp_path):
    staged, ran = _same_as_run(capsys, _recipe(tmp_path / "r.toml", tiny_bert.path, data_files), tmp_path)
    assert staged["gate"]["candidate_name"] == "int8" and list(staged["models"]) == ["teacher", "int8"]
    assert staged["models"]["int8"]["metrics"] == ran["models"]["int8"]["metrics"]
    # the stage folder holds the run's files under the run's names, and is no bundle
    stage = tmp_path / "eq.stages"
    record = json.loads((stage / "model.int8.quantization.json").read_text())
    assert record["quantized_nodes"] == ran["quantization"]["quantized_nodes"]
    assert (stage / "tokenizer").is_dir() and (stage / "config.json").is_file() and (stage / "analysis.json").is_file()
    assert not (stage / "bundle.json").exists()
    assert json.loads((stage / "manifest.json").read_text())["kind"] == "report"


def test_weight_only_stages_equal_run(capsys, tiny_bert, data_files, tmp_path):
    """`quantize --recipe` used to write static int8 for a weight-only recipe."""
    import onnx

    from modelpress.quantize.config import QuantizeConfig

    recipe = _recipe(tmp_path / "r.toml", tiny_bert.path, data_files, quantize={"mode": "weight-only"})
    staged, ran = _same_as_run(capsys, recipe, tmp_path, pressed="model.w8.onnx")
    # the row is named by what the model holds (weight-only 8 bits: "w8"), in the stages as in run
    assert staged["gate"]["candidate_name"] == ran["gate"]["candidate_name"] == "w8"
    ops = {n.op_type for n in onnx.load(str(tmp_path / "eq.stages" / "model.int8.onnx")).graph.node}
    assert "MatMulNBits" in ops and "QuantizeLinear" not in ops and "DynamicQuantizeLinear" not in ops
    written = json.loads((tmp_path / "eq.stages" / "model.int8.quantization.json").read_text())
    assert written["block_size"] == QuantizeConfig().block_size  # the recipe's default reached the quantizer


def test_calibration_seeds_stages_equal_run(capsys, tiny_bert, data_files, tmp_path):
    """`validate --recipe` re-calibrates the stage folder's model.onnx on the other seeds, as run does,
    and gates the worst of them."""
    recipe = _recipe(tmp_path / "r.toml", tiny_bert.path, data_files, quantize={"calibration_seeds": 2})
    staged, ran = _same_as_run(capsys, recipe, tmp_path)
    assert staged["calibration_seeds"] == ran["calibration_seeds"]
    assert [c["name"] for c in staged["calibration_seeds"]["candidates"]] == ["int8", "int8-seed1"]
    assert staged["models"]["int8-seed1"]["metrics"] == ran["models"]["int8-seed1"]["metrics"]


def test_auto_stages_equal_run(capsys, tiny_bert, data_files, tmp_path):
    """`quantize --recipe` used to write plain static int8 for `mode = "auto"`; it now runs the
    accuracy-aware search against the teacher on the eval set, as run does."""
    # no int8 model keeps mean_cosine at 1: the search tries its 3 candidates and writes the best one
    recipe = _recipe(
        tmp_path / "r.toml",
        tiny_bert.path,
        data_files,
        quantize={"mode": "auto", "max_candidates": 3},
        gate={"metric": "mean_cosine", "max_drop": 0.0},
    )
    staged, ran = _same_as_run(capsys, recipe, tmp_path)
    assert staged["gate"]["passed"] is False
    record = json.loads((tmp_path / "eq.stages" / "model.int8.quantization.json").read_text())

    def untimed(auto):
        return {**auto, "candidates": [{k: v for k, v in c.items() if k != "latency_ms"} for c in auto["candidates"]]}

    assert untimed(record["auto"]) == untimed(ran["quantization"]["auto"])
    assert len(record["auto"]["candidates"]) == 3


# -- each key the stage commands dropped is honoured -------------------------------------------------
def test_gate_policy_is_the_recipes(capsys, tiny_bert, data_files, tmp_path):
    """`validate --recipe` recorded and applied policy "point" whatever the recipe said. With a
    max_drop between the measured drop and the top of its 95 % interval, "confident" fails where
    "point" passes: the stage validation fails like the run's verdict re-judged at that max_drop."""
    recipe = _recipe(tmp_path / "r.toml", tiny_bert.path, data_files, gate={"policy": "confident"})
    assert _run(capsys, recipe, tmp_path / "out")[0] == 0
    g = _report(tmp_path / "out" / "eq")["gate"]
    high = g["drop_ci95"][1]
    assert high > max(g["drop"], 0.0)  # int8 is not surely better than the teacher on 30 pairs
    max_drop = f"{(max(g['drop'], 0.0) + high) / 2:.4f}"
    stage = tmp_path / "eq.stages"
    assert _stages(capsys, recipe, stage, validate=("--max-drop", max_drop)) == 3
    staged = _report(stage)["gate"]
    assert (staged["policy"], staged["passed"], staged["drop"], staged["max_drop"]) == (
        "confident",
        False,
        g["drop"],
        float(max_drop),
    )
    assert _main(capsys, "gate", tmp_path / "out" / "eq", "--max-drop", max_drop) == 3  # the run's, re-judged
    assert _main(capsys, "gate", stage, "--policy", "point") == 0  # "point" would pass it


def test_every_runtime_of_the_recipe_is_written_and_gated(capsys, tiny_bert, data_files, tmp_path):
    """`quantize --recipe` wrote no OpenVINO IR and `validate --recipe` measured ONNX Runtime only; now
    the IR comes from the same plan (for the --target given) and both runtimes are gated, as in run."""
    pytest.importorskip("openvino")
    recipe = _recipe(
        tmp_path / "r.toml", tiny_bert.path, data_files, validate={"runtimes": ["onnxruntime", "openvino"]}
    )
    stage = tmp_path / "eq.stages"
    code = _stages(capsys, recipe, stage, quantize=("--target", "x86-64-v3"))
    run_code, bundle = _run(capsys, recipe, tmp_path / "out", "--target", "x86-64-v3")
    assert code == run_code == 0
    for rel in ("model.int8.onnx", "openvino/model.bin"):
        assert _sha(stage / rel) == _sha(bundle / rel), rel

    def graph(xml: Path) -> str:  # OpenVINO numbers the nodes it makes per process: Constant_28, Constant_15385
        return re.sub(r'_[0-9]+"', '_N"', xml.read_text())

    assert graph(stage / "openvino" / "model.xml") == graph(bundle / "openvino" / "model.xml")
    assert json.loads((stage / "model.int8.quantization.json").read_text())["weight_bits"] == 7  # the target's
    staged, ran = _report(stage), _report(bundle)
    assert staged["runtimes"] == ran["runtimes"] == {"onnxruntime": "int8", "openvino": "int8-openvino"}
    assert staged["models"]["int8-openvino"]["metrics"] == ran["models"]["int8-openvino"]["metrics"]
    assert _verdict(staged) == _verdict(ran)


def test_a_new_head_is_seeded_as_in_run(capsys, tiny_bert, data_files, tmp_path):
    """`export` and `validate --recipe` loaded the teacher without allow_new_heads / seed: a checkpoint
    without the task's head was refused (exit 2). Now the head is made as run makes it (seeded)."""
    recipe = _recipe(
        tmp_path / "r.toml",
        tiny_bert.path,
        data_files,
        top={"task": "text-classification", "allow_new_heads": True, "seed": 7},
        task_options=None,
        validate={"eval_data": str(data_files.text_jsonl)},
        gate={"max_drop": 100.0},
    )
    staged, _ = _same_as_run(capsys, recipe, tmp_path)
    assert set(staged["models"]["teacher"]["metrics"]) == {"top1_agreement", "mean_kl"}
    # another seed, another head: the teacher itself differs
    other = _recipe(
        tmp_path / "o.toml",
        tiny_bert.path,
        data_files,
        top={"task": "text-classification", "allow_new_heads": True, "seed": 8},
        task_options=None,
        validate={"eval_data": str(data_files.text_jsonl)},
        gate={"max_drop": 100.0},
    )
    assert _main(capsys, "export", "--recipe", other, "--out", tmp_path / "o" / "model.onnx") == 0
    assert _sha(tmp_path / "o" / "model.onnx") != _sha(tmp_path / "eq.stages" / "model.onnx")


def _remote_code_model(root: Path, base: Path) -> Path:
    """``base`` (a tiny BERT) as a model whose classes ship as code in its folder (``auto_map``)."""
    import shutil

    shutil.copytree(base, root)
    config = json.loads((root / "config.json").read_text())
    config.update(
        model_type="tiny-remote-bert",
        architectures=["TinyRemoteModel"],
        auto_map={"AutoConfig": "configuration_tiny.TinyRemoteConfig", "AutoModel": "modeling_tiny.TinyRemoteModel"},
    )
    (root / "config.json").write_text(json.dumps(config))
    (root / "configuration_tiny.py").write_text(
        "from transformers import BertConfig\n\n\nclass TinyRemoteConfig(BertConfig):\n"
        "    model_type = 'tiny-remote-bert'\n"
    )
    (root / "modeling_tiny.py").write_text(
        "from transformers import BertModel\n\nfrom .configuration_tiny import TinyRemoteConfig\n\n\n"
        "class TinyRemoteModel(BertModel):\n    config_class = TinyRemoteConfig\n"
    )
    return root


def test_trust_remote_code_reaches_every_stage(capsys, tiny_bert, data_files, tmp_path):
    """`validate --recipe` loaded the teacher without trust_remote_code: a model whose classes ship as
    code was refused (exit 2) by the stage while run pressed it."""
    model = _remote_code_model(tmp_path / "remote", tiny_bert.path)
    recipe = _recipe(tmp_path / "r.toml", model, data_files, top={"trust_remote_code": True})
    _same_as_run(capsys, recipe, tmp_path)
    untrusted = _recipe(tmp_path / "u.toml", model, data_files)
    assert (
        _main(
            capsys,
            "validate",
            "--recipe",
            untrusted,
            "--candidate",
            tmp_path / "eq.stages" / "model.int8.onnx",
            "--out",
            tmp_path / "v",
        )
        == 2
    )


def test_distillation_is_exported_as_in_run(capsys, data_files, tmp_path):
    """`export --recipe` exported the teacher of a recipe that distills a student; it now distills
    (into <out>/<name>.distill, which run then reuses) and exports the student."""
    from modelpress.testing import make_teacher

    teacher = make_teacher(tmp_path / "teacher", num_layers=4, seed=2)
    recipe = _recipe(
        tmp_path / "r.toml",
        teacher,
        data_files,
        distill={
            "data": str(data_files.calibration_txt),
            "num_layers": 2,
            "max_steps": 2,
            "batch_size": 8,
            "eval_fraction": 0.2,
        },
        gate={"max_drop": 100.0},
    )
    stage = tmp_path / "eq.stages"
    assert _main(capsys, "export", "--recipe", recipe, "--out", stage / "model.onnx") == 0
    assert json.loads((stage / "config.json").read_text())["num_hidden_layers"] == 2
    assert (tmp_path / "eq.distill").is_dir() and not (stage / "student").exists()
    assert _run(capsys, recipe, tmp_path)[0] == 0
    assert _sha(stage / "model.onnx") == _sha(tmp_path / "eq" / "model.onnx")


# -- flags on top of a recipe; what a single stage cannot do is one line --------------------------------
def test_flags_override_the_recipe_and_are_named_in_errors(capsys, tiny_bert, data_files, tmp_path):
    recipe = _recipe(tmp_path / "r.toml", tiny_bert.path, data_files)
    stage = tmp_path / "s"
    assert _main(capsys, "export", "--recipe", recipe, "--out", stage / "model.onnx") == 0
    assert (
        _main(
            capsys,
            "quantize",
            stage / "model.onnx",
            "--recipe",
            recipe,
            "--out",
            stage / "model.int8.onnx",
            "--method",
            "percentile",
            "--percentile",
            "99.9",
        )
        == 0
    )
    assert json.loads((stage / "model.int8.quantization.json").read_text())["calibration_method"] == "percentile"

    def one_line(expected, *args):
        code = main(["-q", *map(str, args)])
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("modelpress: error:")]
        assert code == 2 and len(errors) == 1 and expected in errors[0], (code, errors)

    one_line(
        "--num-samples: expected >= 1",
        "quantize",
        stage / "model.onnx",
        "--recipe",
        recipe,
        "--out",
        stage / "x.onnx",
        "--num-samples",
        "0",
    )
    one_line(
        "--tokenizer: with --recipe the preprocessor is the recipe teacher's",
        "quantize",
        stage / "model.onnx",
        "--recipe",
        recipe,
        "--out",
        stage / "x.onnx",
        "--tokenizer",
        tiny_bert.path,
    )
    one_line(
        "--seq-lengths: 4096 is more than the 128 positions",
        "validate",
        "--recipe",
        recipe,
        "--candidate",
        stage / "model.int8.onnx",
        "--out",
        stage,
        "--seq-lengths",
        "4096",
    )
    # a runtime the recipe gates whose model the quantize stage did not write; seeds without model.onnx
    one_line(
        "openvino/model.xml: not found; validate.runtimes names openvino",
        "validate",
        "--recipe",
        recipe,
        "--candidate",
        stage / "model.int8.onnx",
        "--out",
        stage,
        "--runtime",
        "openvino",
    )
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "model.int8.onnx").write_bytes((stage / "model.int8.onnx").read_bytes())
    one_line(
        "model.onnx: not found; quantize.calibration_seeds > 1 re-calibrates",
        "validate",
        "--recipe",
        recipe,
        "--set",
        "quantize.calibration_seeds=2",
        "--candidate",
        tmp_path / "alone" / "model.int8.onnx",
        "--out",
        tmp_path / "alone",
    )
    assert not (stage / "x.onnx").exists() and not (tmp_path / "alone" / "report.json").exists()
