"""No verdict on too little evidence (issue 21, case 5): each task declares the fewest units its gate
decides on; below it the gate fails with "too small to decide: n=…, need ≥ …" whatever the policy,
the note is in report.json's gate section, and re-deciding the report (``modelpress gate``) agrees."""

from __future__ import annotations

import pytest

from modelpress.tasks import get_task, task_names
from modelpress.validate.gate import POLICIES, decide, gate_report
from modelpress.export.exporters import export_model

#: the gated metric of each task and the unit its interval resamples
GATED = {
    "feature-extraction": ("spearman", "pairs"),
    "text-classification": ("accuracy", "texts"),
    "text-ranking": ("spearman", "pairs"),
    "token-classification": ("entity_f1", "sentences"),
    "image-classification": ("accuracy", "images"),
    "text-generation": ("perplexity_ratio", "windows"),
}


def _interval(n: int, unit: str, lo: float = -0.1, hi: float = 0.1) -> dict:
    return {"n": n, "unit": unit, "drop_ci95": [lo, hi], "method": "m", "mcnemar_p": None}


def test_every_task_declares_a_minimum_of_at_least_30():
    assert set(GATED) == set(task_names())
    for name in task_names():
        assert get_task(name).min_n >= 30, name


@pytest.mark.parametrize("name", sorted(GATED))
@pytest.mark.parametrize("policy", POLICIES)
def test_below_the_minimum_the_gate_fails_whatever_the_policy(name, policy):
    task = get_task(name)
    metric, unit = GATED[name]
    same = {metric: 0.8}
    few = decide(
        name,
        same,
        same,
        max_drop=5.0,
        metric=metric,
        policy=policy,
        intervals={metric: _interval(task.min_n - 1, unit)},
    )
    assert not few.passed and few.drop == 0.0
    assert few.note.startswith(f"too small to decide: n={task.min_n - 1} {unit}, need ≥ {task.min_n}")
    assert few.note in few.line() and few.line().startswith("gate FAIL")
    enough = decide(
        name, same, same, max_drop=5.0, metric=metric, policy=policy, intervals={metric: _interval(task.min_n, unit)}
    )
    assert enough.passed and enough.note is None


def test_a_metric_without_an_interval_counts_the_units_the_others_resample():
    t, c = {"min_cosine": 0.99, "mean_cosine": 1.0}, {"min_cosine": 0.99, "mean_cosine": 1.0}
    few = decide(
        "feature-extraction", t, c, max_drop=1.0, metric="min_cosine", intervals={"mean_cosine": _interval(4, "texts")}
    )
    assert not few.passed and "n=4 texts, need ≥ 30" in few.note
    assert decide(
        "feature-extraction", t, c, max_drop=1.0, metric="min_cosine", intervals={"mean_cosine": _interval(60, "texts")}
    ).passed
    # no intervals at all is the accuracy-aware search's quick check, not a verdict: no rule
    assert decide("feature-extraction", t, c, max_drop=1.0, metric="min_cosine").passed


def _lm_validate(tmp_path, text: str, **extra):
    from modelpress.config_check import check_section
    from modelpress.recipe import ValidateConfig

    (tmp_path / "heldout.txt").write_text(text, encoding="utf-8")
    return check_section(
        ValidateConfig,
        "validate",
        {
            "eval_data": str(tmp_path / "heldout.txt"),
            "latency_runs": 1,
            "warmup_runs": 0,
            "batch_sizes": [1],
            "seq_lengths": [16],
            "real_workload": False,
            "max_length": 32,
            "threads": 1,
            **extra,
        },
    )


def test_the_text_generation_gate_does_not_pass_on_two_tokens(tmp_path):
    """issue 21 case 5: held-out text "the cat" gave `gate PASS ... n=1 windows`. Now the same
    validation (the PyTorch teacher against its own fp32 ONNX export) fails under every policy with
    the note, in the report and when the report is re-decided; 60 sentences (35 windows) pass."""
    from modelpress.config_check import check_section
    from modelpress.fileio import graph_input_shapes
    from modelpress.modalities.causal_text import CAUSAL_TEXT
    from modelpress.models import load_model_and_preprocessor
    from modelpress.recipe import GateConfig
    from modelpress.tasks import configure_task
    from modelpress.testing import make_tiny_causal_lm, random_sentences
    from modelpress.validate.stage import file_opener, teacher_opener, validate_stage

    folder = make_tiny_causal_lm(tmp_path / "gpt2", family="gpt2")
    task = configure_task("text-generation", {"decode_contexts": [24], "stride": 16})
    model, tok = load_model_and_preprocessor(str(folder), task)
    onnx = export_model(task, model, tok, tmp_path / "model.onnx", opset=18, atol=1e-4).path
    shapes = graph_input_shapes(onnx)
    encoder = CAUSAL_TEXT.encoder(tok, input_names=tuple(shapes), max_length=32, input_shapes=shapes)

    def validate(text: str) -> dict:
        cfg = _lm_validate(tmp_path, text)
        es = task.read_eval(cfg.eval_data, cfg, model_config=model.config, preprocessor=tok)
        return validate_stage(
            task=task,
            cfg=cfg,
            gate_cfg=check_section(GateConfig, "gate", {"max_drop": 2.0}),
            teacher=teacher_opener(model, task=task, encoder=encoder, threads=1),
            candidates=[file_opener(onnx, task=task, encoder=encoder, threads=1, name="onnx-fp32")],
            eval_set=es,
            name="lm",
        )

    report = validate("the cat\n")
    gate = report["gate"]
    assert (gate["metric"], gate["n"], gate["unit"]) == ("perplexity_ratio", 1, "windows")
    assert abs(gate["drop"]) < 0.01  # the export is the teacher: only the evidence is missing
    assert not gate["passed"] and gate["note"].startswith("too small to decide: n=1 windows, need ≥ 30")
    for policy in POLICIES:  # `modelpress gate` re-decides the report the same way, whatever the policy
        again = gate_report(report, policy=policy)
        assert not again.passed and again.note == gate["note"]
    enough = validate("\n".join(random_sentences(60, seed=9)) + "\n")["gate"]
    assert enough["passed"] and enough["n"] >= 30 and enough["note"] is None
