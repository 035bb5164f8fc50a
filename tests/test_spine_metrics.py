"""Fidelity metrics against hand-computed references, the gate's decision, task heads, manifest."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from modelpress.errors import BadInputError
from modelpress.manifest import sha256, verify, write_manifest
from modelpress.paths import publish, staging_dir
from modelpress.modalities import Batch
from modelpress.tasks import configure_task, task_from_dict
from modelpress.measures import metrics as M
from modelpress.validate.gate import GateResult, decide, gate_report
from modelpress.measures.latency import summarize, time_calls


# -- embeddings ---------------------------------------------------------------------------------------
def test_cosine_metrics_by_hand():
    teacher = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    candidate = np.array([[5.0, 0.0], [1.0, 1.0], [-1.0, -1.0]])
    m = M.embedding_metrics(teacher, candidate)
    # cosines: 1, 1/sqrt(2), -1 (scale does not matter)
    assert m["mean_cosine"] == pytest.approx((1 + 1 / math.sqrt(2) - 1) / 3, abs=1e-12)
    assert m["min_cosine"] == pytest.approx(-1.0, abs=1e-12)
    assert M.embedding_reference_metrics(teacher) == {"mean_cosine": 1.0, "min_cosine": 1.0, "nn_agreement": 1.0}


def test_nearest_neighbour_agreement_by_hand():
    def at(*degrees):
        r = np.radians(degrees)
        return np.stack([np.cos(r), np.sin(r)], axis=1)

    teacher = at(0, 10, 80, 90)
    assert M.nearest_neighbours(teacher).tolist() == [1, 0, 3, 2]
    # the candidate moves text 1 to 60°: its neighbour becomes text 2 (85°), the others keep theirs
    candidate = at(0, 60, 85, 90)
    assert M.nearest_neighbours(candidate).tolist() == [1, 2, 3, 2]
    assert M.embedding_metrics(teacher, candidate)["nn_agreement"] == pytest.approx(0.75)
    assert M.embedding_metrics(teacher[:2], candidate[:2])["nn_agreement"] == 1.0  # too few texts to rank


def test_pair_spearman_matches_scipy_and_the_rank_formula():
    emb = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8], [-1.0, 0.0]])
    pairs = [(0, 1, 4.0), (0, 2, 1.0), (0, 3, 3.0), (1, 2, 2.0), (2, 4, 5.0), (0, 4, 0.5)]
    sims = np.array([emb[i] @ emb[j] / np.linalg.norm(emb[i]) / np.linalg.norm(emb[j]) for i, j, _ in pairs])
    gold = np.array([s for _, _, s in pairs])
    # sims: 0.8, 0, -0.6, 0.6, 0, -1 → ties at 0; the reference is scipy on the same numbers
    expected = spearmanr(sims, gold).statistic
    assert M.pair_spearman(emb, pairs) == pytest.approx(expected, abs=1e-12)
    # without ties, 1 - 6 Σd² / (n(n²-1))
    pairs_nt = [(0, 1, 4.0), (0, 3, 1.0), (1, 2, 3.0), (0, 4, 0.5), (1, 3, 2.0)]
    sims_nt = [0.8, -0.6, 0.6, -1.0, 0.0]
    rs, rg = np.argsort(np.argsort(sims_nt)), np.argsort(np.argsort([4.0, 1.0, 3.0, 0.5, 2.0]))
    n = len(pairs_nt)
    assert M.pair_spearman(emb, pairs_nt) == pytest.approx(1 - 6 * ((rs - rg) ** 2).sum() / (n * (n * n - 1)))
    assert M.embedding_metrics(emb, emb, pairs)["spearman"] == pytest.approx(expected)


# -- classification --------------------------------------------------------------------------------
def test_kl_top1_and_accuracy_on_fixed_logits():
    teacher = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    candidate = np.array([[math.log(3.0), 0.0], [2.0, 0.0], [1.0, 0.0]])
    m = M.classification_metrics(teacher, candidate, labels=(0, 0, 0))
    p = np.exp(teacher) / np.exp(teacher).sum(1, keepdims=True)
    q = np.exp(candidate) / np.exp(candidate).sum(1, keepdims=True)
    kl_rows = (p * np.log(p / q)).sum(1)
    assert kl_rows[0] == pytest.approx(0.5 * math.log(4 / 3))  # KL([.5,.5] || [.75,.25]) by hand
    assert kl_rows[1] == pytest.approx(0.0, abs=1e-15)
    assert m["mean_kl"] == pytest.approx(kl_rows.mean(), rel=1e-12)
    # KL(teacher ‖ candidate), not the reverse
    assert m["mean_kl"] != pytest.approx(M.classification_metrics(candidate, teacher)["mean_kl"], rel=1e-3)
    assert m["top1_agreement"] == pytest.approx(2 / 3)  # row 2 flips
    assert m["accuracy"] == pytest.approx(1.0)  # candidate argmax 0, 0, 0
    ref = M.classification_reference_metrics(teacher, labels=(0, 0, 0))
    assert ref == {"top1_agreement": 1.0, "mean_kl": 0.0, "accuracy": pytest.approx(2 / 3)}
    assert "accuracy" not in M.classification_metrics(teacher, candidate)


def test_primary_metric_per_task():
    from modelpress.tasks import get_task

    fe, tc, tok = get_task("feature-extraction"), get_task("text-classification"), get_task("token-classification")
    assert fe.primary_metric({"mean_cosine", "spearman"}) == "spearman"
    assert fe.primary_metric({"mean_cosine"}) == "mean_cosine"
    assert tc.primary_metric({"top1_agreement", "accuracy", "mean_kl"}) == "accuracy"
    assert tc.primary_metric({"top1_agreement", "mean_kl"}) == "top1_agreement"
    assert tok.primary_metric({"top1_agreement", "accuracy", "entity_f1"}) == "entity_f1"
    assert tok.primary_metric({"top1_agreement", "accuracy"}) == "accuracy"
    assert (
        decide(
            "feature-extraction",
            {"spearman": 1.0, "min_cosine": 1.0},
            {"spearman": 1.0, "min_cosine": 0.9},
            max_drop=1.0,
            metric="min_cosine",
        ).metric
        == "min_cosine"
    )
    # the direction of each metric is the task's
    assert tc.direction("mean_kl") == "lower" and tc.direction("accuracy") == "higher"


# -- the gate -----------------------------------------------------------------------------------------
def test_gate_pass_fail_and_edge():
    t = {"spearman": 0.86, "mean_cosine": 1.0}
    ok = decide("feature-extraction", t, {"spearman": 0.857, "mean_cosine": 0.99}, max_drop=0.5)
    assert (ok.metric, ok.teacher, ok.candidate, ok.drop, ok.passed) == ("spearman", 86.0, 85.7, 0.3, True)
    bad = decide("feature-extraction", t, {"spearman": 0.85, "mean_cosine": 0.99}, max_drop=0.5)
    assert bad.drop == pytest.approx(1.0) and not bad.passed
    assert "FAIL" in bad.line() and "PASS" in ok.line()
    better = decide("feature-extraction", t, {"spearman": 0.87, "mean_cosine": 0.99}, max_drop=0.0)
    assert better.drop == pytest.approx(-1.0) and better.passed
    same = decide("feature-extraction", t, dict(t), max_drop=0.0)
    assert same.drop == 0.0 and same.passed
    by_cos = decide(
        "feature-extraction", t, {"spearman": 0.86, "mean_cosine": 0.99}, max_drop=0.5, metric="mean_cosine"
    )
    assert by_cos.metric == "mean_cosine" and by_cos.drop == pytest.approx(1.0) and not by_cos.passed


@pytest.mark.parametrize(
    "teacher, candidate, max_drop",
    [
        (0.9, 0.895, 0.5),
        (0.8001, 0.7991, 0.1),  # 80.01 - 79.91 = 0.10000000000000853 in floating point
        (0.8004, 0.7904, 1.0),  # 80.04 - 79.04 = 1.0000000000000142
        (0.8672, 0.8622, 0.5),
    ],
)
def test_gate_drop_exactly_at_the_limit_passes(teacher, candidate, max_drop):
    """The report shows drop == max_drop; the verdict must then be PASS (drop <= max_drop)."""
    g = decide("feature-extraction", {"spearman": teacher}, {"spearman": candidate}, max_drop=max_drop)
    assert g.drop == max_drop
    assert g.passed, g.line()


def test_gate_kl_is_lower_is_better():
    t = {"top1_agreement": 1.0, "mean_kl": 0.0}
    worse = decide("text-classification", t, {"top1_agreement": 1.0, "mean_kl": 0.02}, max_drop=1.0, metric="mean_kl")
    assert worse.drop == pytest.approx(2.0) and not worse.passed
    fine = decide("text-classification", t, {"top1_agreement": 1.0, "mean_kl": 0.005}, max_drop=1.0, metric="mean_kl")
    assert fine.drop == pytest.approx(0.5) and fine.passed


def test_gate_unknown_metric_and_report_regating():
    with pytest.raises(BadInputError, match="was not measured"):
        decide("feature-extraction", {"mean_cosine": 1.0}, {"mean_cosine": 0.9}, max_drop=1, metric="spearman")
    report = {
        "task": "feature-extraction",
        "models": {
            "teacher": {"metrics": {"spearman": 0.8, "mean_cosine": 1.0}},
            "int8": {"metrics": {"spearman": 0.79, "mean_cosine": 0.999}},
        },
        "gate": GateResult("spearman", 80.0, 79.0, 1.0, 0.5, False, "int8").to_dict(),
    }
    assert not gate_report(report).passed  # the run's own max_drop, 0.5
    assert gate_report(report, max_drop=1.0).passed
    g = gate_report(report, metric="mean_cosine")
    assert g.metric == "mean_cosine" and g.drop == pytest.approx(0.1) and g.passed
    with pytest.raises(BadInputError, match="lacks the key"):
        gate_report({"models": {}, "task": "feature-extraction"})


# -- task heads -------------------------------------------------------------------------------------
def test_mean_and_cls_pooling_by_hand():
    hidden = np.array([[[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]]], dtype=np.float32)  # last token is padding
    mask = np.array([[1, 1, 0]])
    batch = Batch({"attention_mask": mask})

    def fe(pooling, normalize):
        return configure_task("feature-extraction", {"pooling": pooling, "normalize": normalize})

    mean = fe("mean", False).postprocess({"last_hidden_state": hidden}, batch)
    assert mean.tolist() == [[2.0, 3.0]]
    unit = fe("mean", True).postprocess({"last_hidden_state": hidden}, batch)
    np.testing.assert_allclose(unit, [[2 / math.sqrt(13), 3 / math.sqrt(13)]], rtol=1e-6)
    cls = fe("cls", False).postprocess({"last_hidden_state": hidden}, batch)
    assert cls.tolist() == [[1.0, 1.0]]
    logits = np.array([[0.5, -1.0]], dtype=np.float32)
    assert configure_task("text-classification").postprocess({"logits": logits}, batch).tolist() == logits.tolist()
    # the torch side (distillation) pools with the same definition
    import torch

    from modelpress.tasks.feature_extraction import pool

    np.testing.assert_allclose(
        pool(torch.from_numpy(hidden), torch.from_numpy(mask), pooling="mean", normalize=True).numpy(), unit, rtol=1e-6
    )


def test_heads_from_sentence_transformers_files_and_round_trip(tmp_path):
    def make_head(name, *, model_dir=None, options=None):
        return configure_task(name, options or {}, model_dir=model_dir)

    assert make_head("feature-extraction", model_dir=tmp_path).describe() == {
        "task": "feature-extraction",
        "pooling": "mean",
        "normalize": False,
    }
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (tmp_path / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ]
        )
    )
    head = make_head("feature-extraction", model_dir=tmp_path)
    assert (head.pooling, head.normalize) == ("cls", True)
    forced = make_head("feature-extraction", model_dir=tmp_path, options={"pooling": "mean", "normalize": False})
    assert (forced.pooling, forced.normalize) == ("mean", False)
    for h in (head, forced, make_head("text-classification"), make_head("token-classification")):
        assert task_from_dict(h.describe()) == h
    with pytest.raises(BadInputError, match="known tasks: feature-extraction, text-classification"):
        make_head("translation")
    with pytest.raises(BadInputError):
        task_from_dict({"task": "translation"})
    with pytest.raises(BadInputError, match="task_options.pool: unknown"):
        make_head("feature-extraction", options={"pool": "cls"})


# -- latency summary ----------------------------------------------------------------------------------
def test_latency_summary_percentiles():
    s = summarize([0.001, 0.002, 0.003, 0.004, 0.010], batch_size=4, seq_len=16)
    assert (s.runs, s.p50_ms, s.mean_ms) == (5, 3.0, 4.0)
    assert s.throughput_per_s == pytest.approx(4 / 0.003, rel=1e-4)
    assert s.p99_ms <= 10.0 and s.p95_ms >= s.p50_ms
    calls = []
    assert len(time_calls(lambda: calls.append(1), runs=4, warmup=2)) == 4 and len(calls) == 6


# -- manifest and publishing ----------------------------------------------------------------------------
def test_manifest_checksums_and_tamper_detection(tmp_path):
    root = tmp_path / "bundle"
    (root / "tokenizer").mkdir(parents=True)
    (root / "model.onnx").write_bytes(b"\x00\x01model")
    (root / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    write_manifest(
        root,
        recipe={"name": "x"},
        task={"task": "feature-extraction"},
        metrics={},
        gate={"passed": False},
        input_names=["input_ids"],
    )
    manifest = json.loads((root / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.onnx", "tokenizer/vocab.txt"}
    import hashlib

    assert manifest["files"]["model.onnx"]["sha256"] == hashlib.sha256(b"\x00\x01model").hexdigest()
    assert manifest["verdict"] == "fail" and manifest["versions"]["numpy"] == np.__version__
    assert verify(root) == []
    (root / "model.onnx").write_bytes(b"\x00\x02model")
    (root / "tokenizer" / "vocab.txt").unlink()
    assert sorted(verify(root)) == ["model.onnx", "tokenizer/vocab.txt"]
    assert sha256(root / "model.onnx") == hashlib.sha256(b"\x00\x02model").hexdigest()


def test_publish_replaces_an_older_run_and_leaves_no_leftovers(tmp_path):
    from modelpress.manifest import write_manifest

    final = tmp_path / "job"
    final.mkdir()
    (final / "old.txt").write_text("old")
    # an older run is a bundle: publish replaces nothing else (a teacher folder under --out .)
    write_manifest(
        final,
        recipe={"name": "job"},
        task={"task": "feature-extraction"},
        metrics={},
        gate={"passed": True},
        input_names=["input_ids"],
    )
    staging = staging_dir(tmp_path, "job")
    assert staging.name.startswith(".job.partial-") and staging != staging_dir(tmp_path, "job")  # one per run
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    publish(staging, final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job"]
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]


def test_an_interrupted_swap_is_recovered_by_the_next_run(tmp_path):
    """publish() parks the previous bundle as .job.old before renaming the new one in; a run
    killed between the two renames leaves only .job.old: the next run of the name puts it back."""
    from modelpress.paths import recover

    old = tmp_path / ".job.old"
    old.mkdir()
    (old / "model.int8.onnx").write_text("previous")
    (tmp_path / ".job.partial-123-abcd").mkdir()
    assert recover(tmp_path, "job") == ["restored job from .job.old", "removed .job.partial-123-abcd"]
    assert (tmp_path / "job" / "model.int8.onnx").read_text() == "previous"
    old.mkdir()
    assert recover(tmp_path, "job") == ["removed .job.old"] and (tmp_path / "job").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job"]
