"""Defaults fit the model (issue 21 case 9): a length the user never wrote (decode contexts,
latency sequence lengths, ``max_length`` of calibration and validation) that the model's positions
cannot take is clipped to them, with one log line and a ``defaults_clipped`` entry in the report;
a value the user wrote, in the recipe or with ``--set``, is refused as before."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
from conftest import write_recipe

from modelpress.errors import BadInputError


def _recipe(tmp_path, task="text-generation", *, sections=None, overrides=()):
    from modelpress.recipe import load_recipe

    path = write_recipe(tmp_path / "r.toml", {"name": "r", "teacher": "unused", "task": task}, sections or {})
    return load_recipe(path, list(overrides))


def _fit(recipe, positions, task_name=None):
    from modelpress.modalities import get_modality
    from modelpress.recipe import fit_lengths
    from modelpress.tasks import configure_task

    task = configure_task(task_name or recipe.task, None if task_name else recipe.task_options)
    config = SimpleNamespace(max_position_embeddings=positions, model_type="llama")
    return fit_lengths(
        {"calibration": recipe.calibration, "validate": recipe.validate},
        task=task,
        modality=get_modality(task.modality),
        model_config=config,
        preprocessor=None,
        written=recipe.written,
    )


def test_the_default_decode_contexts_are_clipped_to_a_256_position_model(tmp_path, caplog):
    """issue 21 case 9, as measured: 256 positions, the default decode contexts [128, 512]."""
    from modelpress.tasks import configure_task

    recipe = _recipe(tmp_path)
    task = configure_task(recipe.task, recipe.task_options)
    assert task.decode_contexts == (128, 512)  # the default, not written
    with caplog.at_level(logging.INFO, logger="modelpress"):
        sections, fitted = _fit(recipe, 256)
    # a decode step at context c feeds c + 1 positions: 255 is the longest context 256 positions take
    assert task.with_lengths(fitted).decode_contexts == (128, 255)
    assert fitted.clipped == {"task_options.decode_contexts": {"default": [128, 512], "used": [128, 255]}}
    assert fitted.limit == 256
    lines = [r.getMessage() for r in caplog.records if "defaults fitted" in r.getMessage()]
    assert lines == [
        "defaults fitted to the 256 positions the model takes: task_options.decode_contexts [128, 512] -> [128, 255]"
    ]
    # what fits stays as it was
    assert sections["validate"].seq_lengths == (128,) and sections["calibration"].max_length == 128


def test_every_default_length_is_clipped_and_only_the_tasks_own_keys_count(tmp_path):
    recipe = _recipe(tmp_path)
    sections, fitted = _fit(recipe, 64)
    cal, v = sections["calibration"], sections["validate"]
    contexts = fitted.values["task_options.decode_contexts"]
    assert (cal.max_length, v.max_length, v.seq_lengths, contexts) == (64, 64, (64,), (63,))
    assert set(fitted.clipped) == {
        "calibration.max_length",
        "validate.max_length",
        "validate.seq_lengths",
        "task_options.decode_contexts",
    }
    assert fitted.clipped["validate.seq_lengths"] == {"default": [128], "used": [64]}
    # an encoder has no decode step: its decode contexts are neither checked nor clipped
    _, encoder = _fit(_recipe(tmp_path, "feature-extraction"), 64)
    assert "task_options.decode_contexts" not in encoder.clipped and len(encoder.clipped) == 3


@pytest.mark.parametrize(
    "sections, overrides, message",
    [
        (
            {"task_options": {"decode_contexts": [128, 512]}},
            (),
            "task_options.decode_contexts: 513 is more than the 256",
        ),
        # the spelling of 0.x, read for one release
        ({"validate": {"decode_contexts": [128, 512]}}, (), "task_options.decode_contexts: 513 is more than the 256"),
        ({"validate": {"seq_lengths": [300]}}, (), "validate.seq_lengths: 300 is more than the 256"),
        ({"calibration": {"max_length": 257}}, (), "calibration.max_length: 257 is more than the 256"),
        ({}, ("validate.max_length=1000",), "validate.max_length: 1000 is more than the 256"),
        ({}, ("task_options.decode_contexts=[256]",), "task_options.decode_contexts: 257 is more than the 256"),
    ],
)
def test_a_length_the_user_wrote_is_refused_even_when_it_equals_the_default(tmp_path, sections, overrides, message):
    recipe = _recipe(tmp_path, sections=sections, overrides=overrides)
    with pytest.raises(BadInputError) as err:
        _fit(recipe, 256)
    assert str(err.value) == f"{message} positions the model takes"


def test_a_recipe_built_in_code_counts_every_key_as_written():
    """No parsed table says what was written: nothing is clipped behind the caller's back."""
    from modelpress.recipe import Recipe

    with pytest.raises(BadInputError, match="task_options.decode_contexts: 513 is more than the 256"):
        _fit(Recipe(name="r", teacher="unused", task="text-generation"), 256)


# -- through the commands, on a tiny decoder of 64 positions ------------------------------------------------
@pytest.fixture(scope="module")
def short_lm(tmp_path_factory):
    """A tiny Llama that takes 64 positions (rotary: no position table to resize), and its data."""
    from modelpress.testing import make_tiny_causal_lm, random_sentences

    root = tmp_path_factory.mktemp("short-lm")
    folder = make_tiny_causal_lm(root / "llama", family="llama")
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    (root / "corpus.txt").write_text("\n".join(random_sentences(200, seed=1)) + "\n", encoding="utf-8")
    # enough held-out text for a verdict (≥ 30 windows of 64 tokens every 32)
    (root / "heldout.txt").write_text("\n".join(random_sentences(150, seed=9)) + "\n", encoding="utf-8")
    return SimpleNamespace(folder=folder, root=root)


def _minimal(short_lm, tmp_path, **validate):
    """No length key written: only data, the sample size and what keeps timing short."""
    top = {"name": "lm", "teacher": str(short_lm.folder), "task": "text-generation"}
    return write_recipe(
        tmp_path / "lm.toml",
        top,
        {
            "calibration": {"data": str(short_lm.root / "corpus.txt"), "num_samples": 16},
            "validate": {
                "eval_data": str(short_lm.root / "heldout.txt"),
                "latency_runs": 2,
                "warmup_runs": 1,
                "batch_sizes": [1],
                "real_workload": False,
                "threads": 1,
                **validate,
            },
            "gate": {"max_drop": 100.0},
        },
    )


CLIPPED_64 = {
    "calibration.max_length": {"default": 128, "used": 64},
    "validate.max_length": {"default": 128, "used": 64},
    "validate.seq_lengths": {"default": [128], "used": [64]},
    "task_options.decode_contexts": {"default": [128, 512], "used": [63]},
}


def test_run_and_validate_fit_the_defaults_and_refuse_what_the_user_wrote(short_lm, tmp_path, caplog, capsys):
    """issue 21 case 9: a minimal text-generation recipe for a model of few positions exited 2
    (``validate.decode_contexts: 129 is more than the 64 positions``); now it runs, says so in one
    line, and the report records what was clipped. ``modelpress validate --recipe`` likewise."""
    from modelpress.cli import main

    recipe = _minimal(short_lm, tmp_path)
    with caplog.at_level(logging.INFO, logger="modelpress"):
        assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 0
    lines = [r for r in caplog.records if "defaults fitted" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert lines[0].getMessage().startswith("defaults fitted to the 64 positions the model takes: ")
    bundle = tmp_path / "out" / "lm"
    report = json.loads((bundle / "report.json").read_text())
    assert report["defaults_clipped"] == CLIPPED_64
    # what was measured is what the report says was used
    int8 = report["models"]["int8"]
    assert [r["seq_len"] for r in int8["latency"]] == [64]
    assert [r["context"] for r in int8["decode_latency"]] == [63]
    assert json.loads((bundle / "bundle.json").read_text())["max_length"] == 64
    assert "defaults fitted to the model's positions" in (bundle / "report.md").read_text()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="modelpress"):
        assert (
            main(
                [
                    "validate",
                    "--recipe",
                    str(recipe),
                    "--candidate",
                    str(bundle / "model.int8.onnx"),
                    "--out",
                    str(tmp_path / "v"),
                ]
            )
            == 0
        )
    assert json.loads((tmp_path / "v" / "report.json").read_text())["defaults_clipped"] == {
        k: c for k, c in CLIPPED_64.items() if not k.startswith("calibration.")
    }
    assert any("defaults fitted" in r.getMessage() for r in caplog.records)
    capsys.readouterr()

    # a value the user wrote is refused, in the recipe, with --set, or as a flag: one line, exit 2
    written = _minimal(short_lm, tmp_path, decode_contexts=[128])
    assert main(["run", str(written), "--out", str(tmp_path / "out2")]) == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == "modelpress: error: task_options.decode_contexts: 129 is more than the 64 positions the model takes"
    )
    assert main(["run", str(recipe), "--out", str(tmp_path / "out2"), "--set", "validate.seq_lengths=[128]"]) == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == "modelpress: error: validate.seq_lengths: 128 is more than the 64 positions the model takes"
    )
    assert (
        main(
            [
                "validate",
                "--recipe",
                str(recipe),
                "--candidate",
                str(bundle / "model.int8.onnx"),
                "--out",
                str(tmp_path / "v2"),
                "--seq-lengths",
                "100",
            ]
        )
        == 2
    )
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == "modelpress: error: --seq-lengths: 100 is more than the 64 positions the model takes"
    )
    assert not (tmp_path / "out2" / "lm").exists() and not (tmp_path / "v2" / "report.json").exists()
