"""Nothing wrong ships: every fault a user can cause ends in one line and exit 2 — never a
traceback, never a bundle — and data that cannot be used is named (file:line), never scored.
Most cases run the CLI in process (``modelpress.cli.main``): an exception escaping it fails the test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import FAST_CALIBRATION, FAST_VALIDATE, write_recipe

from modelpress.cli import main


def _run(capsys, *args) -> tuple[int, list[str]]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("modelpress: error:")]


def _one_error(capsys, expected: str, *args) -> None:
    code, errors = _run(capsys, *args)
    assert code == 2 and len(errors) == 1 and expected in errors[0], (code, errors)


def _recipe(tmp_path: Path, tiny_bert, data_files, *, top=None, **sections) -> Path:
    base = {
        "calibration": {"data": str(data_files.calibration_txt), **FAST_CALIBRATION},
        "validate": {"eval_data": str(data_files.pairs_jsonl), **FAST_VALIDATE},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return write_recipe(tmp_path / "r.toml", {"name": "r", "teacher": str(tiny_bert.path), **(top or {})}, base)


# -- models and folders ----------------------------------------------------------------------------------
def test_a_truncated_safetensors_file_is_named(capsys, tmp_path, tiny_bert, data_files):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bert.path, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    recipe = _recipe(tmp_path, tiny_bert, data_files, top={"teacher": str(broken)})
    _one_error(capsys, "not a readable safetensors file", "-q", "run", recipe, "--out", tmp_path / "out")
    assert not (tmp_path / "out" / "r").exists()


@pytest.mark.parametrize("where", ["a file", "under /proc"])
def test_an_out_folder_that_cannot_be_made_is_named(capsys, tmp_path, tiny_bert, data_files, where):
    out = tmp_path / "file.txt" if where == "a file" else Path("/proc/modelpress-out")
    if where == "a file":
        out.write_text("not a folder")
    _one_error(capsys, "cannot create the output folder", "run", _recipe(tmp_path, tiny_bert, data_files), "--out", out)


def test_a_full_disk_ends_in_one_line_and_keeps_the_earlier_bundle(tmp_path, tiny_bert, data_files):
    from conftest import cli

    from modelpress.manifest import verify, write_manifest

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root); the full-disk case is not exercised")
    try:
        earlier = disk / "r"
        earlier.mkdir()
        (earlier / "model.int8.onnx").write_bytes(b"the earlier model")
        write_manifest(
            earlier,
            recipe={"name": "r"},
            task={"task": "feature-extraction"},
            metrics={},
            gate={"passed": True},
            input_names=["input_ids"],
        )
        proc = cli("-q", "run", _recipe(tmp_path, tiny_bert, data_files), "--out", disk)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1].endswith("No space left on device")
        assert sorted(p.name for p in disk.iterdir()) == [".r.lock", "r"]  # no staging folder left
        assert verify(earlier) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_hub_id_offline_fails_at_once(capsys, tmp_path, tiny_bert, data_files, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = _recipe(tmp_path, tiny_bert, data_files, top={"teacher": "nobody/not-a-model"})
    t0 = time.perf_counter()
    _one_error(capsys, "HF_HUB_OFFLINE is set with no cached copy", "run", recipe, "--out", tmp_path / "out")
    assert time.perf_counter() - t0 < 5


# -- shapes the model cannot run -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "section, key, value",
    [
        ("calibration", "max_length", 100000),
        ("validate", "max_length", 100000),
        ("validate", "seq_lengths", [16, 100000]),
    ],
)
def test_lengths_beyond_the_models_positions_are_refused_before_anything_is_written(
    capsys, tmp_path, tiny_bert, data_files, section, key, value
):
    recipe = _recipe(tmp_path, tiny_bert, data_files, **{section: {key: value}})
    _one_error(
        capsys,
        f"{section}.{key}: 100000 is more than the 128 positions the model takes",
        "-q",
        "run",
        recipe,
        "--out",
        tmp_path / "out",
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".r.lock"]


# -- bad data is named, never used ---------------------------------------------------------------------
def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([{"text": "a dog", "label": 7}], "label 7 is not a class of the model (0..2"),
        ([{"text": "a dog", "label": -1}], "label -1 is not a class of the model"),
        ([{"text": "a dog", "label": 1.5}], "label 1.5 is not an integer class id"),
        ([{"text": "a dog", "label": 1}, {"text": "a cat"}], "no 'label' (the first record has one)"),
        ([{"text": "a dog", "label": 1}, {"txt": "a cat", "label": 0}], ":2: no field 'text'"),
        ([{"text": "a dog", "label": 1}, {"text": None, "label": 0}], ":2: 'text' is NoneType None, not text"),
    ],
)
def test_bad_classifier_rows_are_named_with_their_line(capsys, tmp_path, tiny_bert_cls, data_files, rows, expected):
    good = [{"text": f"a dog runs {i}", "label": i % 3} for i in range(5)]
    data = _jsonl(tmp_path / "eval.jsonl", rows + good)
    recipe = write_recipe(
        tmp_path / "c.toml",
        {"name": "c", "teacher": str(tiny_bert_cls.path), "task": "text-classification"},
        {
            "calibration": {"data": str(data_files.calibration_txt), **FAST_CALIBRATION},
            "validate": {"eval_data": str(data), **FAST_VALIDATE},
        },
    )
    _one_error(capsys, expected, "-q", "run", recipe, "--out", tmp_path / "out")


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([{"sentence1": None, "sentence2": "a cat", "score": 1.0}], ":1: 'sentence1' is None, not a text"),
        ([{"sentence1": "a dog", "score": 1.0}], ":1: a pair needs the fields sentence2"),
        ([{"sentence1": "a dog", "sentence2": "a cat", "score": "NaN"}], ":1: score 'NaN' is not a finite number"),
        (
            [{"sentence1": f"a dog {i}", "sentence2": "a cat", "score": 2.0} for i in range(6)],
            "spearman cannot be computed: the 6 gold score(s) of the eval set are all equal",
        ),
    ],
)
def test_bad_pairs_are_named(capsys, tmp_path, tiny_bert, data_files, rows, expected):
    data = _jsonl(tmp_path / "pairs.jsonl", rows)
    recipe = _recipe(tmp_path, tiny_bert, data_files, validate={"eval_data": str(data)})
    _one_error(capsys, expected, "-q", "run", recipe, "--out", tmp_path / "out")
    assert not (tmp_path / "out" / "r").exists()


def test_every_calibration_row_is_checked(capsys, tmp_path, tiny_bert, data_files):
    data = _jsonl(tmp_path / "cal.jsonl", [{"text": "a dog runs"}] + [{"sentence": "a cat"}] * 39)
    recipe = _recipe(tmp_path, tiny_bert, data_files, calibration={"data": str(data)})
    _one_error(capsys, "cal.jsonl:2: no field 'text'", "-q", "run", recipe, "--out", tmp_path / "out")
    _one_error(
        capsys,
        "/dev/zero: not a regular file",
        "-q",
        "run",
        _recipe(tmp_path, tiny_bert, data_files, calibration={"data": "/dev/zero"}),
        "--out",
        tmp_path / "out",
    )


# -- single-stage commands ------------------------------------------------------------------------------
def test_quantize_refuses_what_it_cannot_quantize(capsys, tmp_path, tiny_bert, data_files, bert_onnx):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(os.urandom(300))
    common = ["--tokenizer", tiny_bert.path, "--data", data_files.calibration_txt, "--out", tmp_path / "q.onnx"]
    _one_error(capsys, "junk.onnx: not an ONNX model", "quantize", junk, *common)
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[w],
    )
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(other))
    _one_error(capsys, "are not a text model's", "quantize", other, *common)
    _one_error(
        capsys,
        "calibration.num_samples: expected >= 1",
        "quantize",
        bert_onnx.onnx_path,
        *common,
        "--num-samples",
        "-1",
    )
    assert not (tmp_path / "q.onnx").exists()


def test_export_and_validate_flags_are_checked_like_recipe_keys(capsys, tmp_path, tiny_bert, bert_onnx, data_files):
    for flags, expected in (
        (["--opset", "99"], "export.opset: expected <= 24"),
        (["--opset", "10"], "export.opset: expected >= 18"),
        (["--atol", "-1"], "export.atol: expected > 0.0"),
    ):
        _one_error(capsys, expected, "export", tiny_bert.path, "--out", tmp_path / "m.onnx", *flags)
    (tmp_path / "folder").mkdir()
    _one_error(capsys, "is a folder", "export", tiny_bert.path, "--out", tmp_path / "folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]  # nothing half-written
    _one_error(
        capsys,
        "--seq-lengths: 100000 is more than the 128 positions",
        "validate",
        "--teacher",
        tiny_bert.path,
        "--candidate",
        bert_onnx.onnx_path,
        "--eval-data",
        data_files.pairs_jsonl,
        "--out",
        tmp_path / "v",
        "--seq-lengths",
        "100000",
    )
