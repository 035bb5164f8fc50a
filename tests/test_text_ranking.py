"""text-ranking (cross-encoders): NDCG@10 against scikit-learn, MRR@10 by hand and by brute force
over tie orders, Kendall's τ-b against scipy, the readers and calibration pairs, pair encoding
against the tokenizer's own, the score class, the gate's rule, and tiny random cross-encoders
(one score; three NLI-style classes) through ``modelpress run`` to bundles whose metrics, ``score()``
and ``rank()`` match the PyTorch model's logits."""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest
from conftest import FAST_CALIBRATION, FAST_VALIDATE, INIT_RANGE, SPECIAL_TOKENS, VOCAB, cli, make_texts, write_recipe

from modelpress.errors import BadInputError
from modelpress.modalities.text import TextEncoder, TextPair, load_pairs
from modelpress.tasks import ranking as R

NLI = ("contradiction", "entailment", "neutral")


# -- per-query measures against independent references ----------------------------------------------
def test_ndcg_at_10_equals_scikit_learn_with_ties_and_cut_off():
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        n = int(rng.integers(2, 25))  # past 10: the cut-off matters
        scores = np.round(rng.normal(size=n), 1)  # rounded: many ties
        relevance = rng.choice([0, 0, 0, 1, 2, 3], size=n).astype(float)
        ours = R.ndcg_at_k(scores, relevance, 10)
        if relevance.sum() == 0:
            assert math.isnan(ours)  # no relevant passage: no NDCG (left out of the mean)
            continue
        assert ours == pytest.approx(ndcg_score([relevance], [scores], k=10), abs=1e-12)
        checked += 1
    assert checked > 200


def _mrr_by_enumeration(scores, relevance, k=10):
    """The mean over every order of the tied passages of 1 / rank of the first relevant one (≤ k)."""
    groups = [
        list(g)
        for _, g in itertools.groupby(sorted(range(len(scores)), key=lambda i: -scores[i]), key=lambda i: scores[i])
    ]
    values = []
    for orders in itertools.product(*(itertools.permutations(g) for g in groups)):
        ranked = [i for g in orders for i in g]
        first = next((r for r, i in enumerate(ranked, 1) if relevance[i] > 0), None)
        values.append(1.0 / first if first is not None and first <= k else 0.0)
    return float(np.mean(values))


def test_mrr_at_10_by_hand_and_over_every_order_of_ties():
    assert R.mrr_at_k([0.9, 0.8, 0.7], [0, 0, 1]) == pytest.approx(1 / 3)
    assert R.mrr_at_k([0.9, 0.8, 0.7], [2, 0, 1]) == 1.0
    assert R.mrr_at_k(np.arange(12, 0, -1), [0] * 10 + [1, 1]) == 0.0  # first relevant at rank 11
    assert R.mrr_at_k([0.5, 0.5], [0, 1]) == pytest.approx(0.75)  # rank 1 or 2, evenly
    # one passage above a tie of three, two of them relevant: rank 2 w.p. 2/3, rank 3 w.p. 1/3
    assert R.mrr_at_k([0.9, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == pytest.approx(2 / 3 / 2 + 1 / 3 / 3)
    assert math.isnan(R.mrr_at_k([0.1, 0.2], [0, 0]))
    rng = random.Random(1)
    for _ in range(150):
        n = rng.randint(2, 7)
        scores = [rng.choice([0.0, 0.5, 1.0]) for _ in range(n)]
        relevance = [rng.choice([0, 0, 1]) for _ in range(n)]
        if any(relevance):
            assert R.mrr_at_k(scores, relevance, k=3) == pytest.approx(_mrr_by_enumeration(scores, relevance, 3))


def test_kendall_tau_b_equals_scipy_with_ties():
    from scipy.stats import kendalltau

    rng = np.random.default_rng(2)
    for _ in range(200):
        n = int(rng.integers(2, 30))
        a, b = np.round(rng.normal(size=n), 1), np.round(rng.normal(size=n), 1)
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            continue
        assert R.kendall_tau_b(a, b) == pytest.approx(kendalltau(a, b).statistic, abs=1e-12)
    assert math.isnan(R.kendall_tau_b([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def test_agreement_and_tau_per_query_leave_out_what_has_no_order():
    rs = R.RankingSet(pairs=tuple(TextPair("q", str(i)) for i in range(7)), queries=((0, 1, 2), (3,), (4, 5), (6,)))
    teacher = np.array([0.1, 0.9, 0.5, 0.3, 0.2, 0.2, 0.0])  # query 3 scored alike: no order
    candidate = np.array([0.2, 0.8, 0.85, 0.3, 0.1, 0.4, 0.0])  # query 1: the top passage changes
    assert R.top1_agreements(teacher, candidate, rs).tolist() == [False, True]  # single-passage queries left out
    assert R.kendall_taus(teacher, candidate, rs).tolist() == [pytest.approx(1 / 3)]
    m = R.ranking_metrics(teacher, candidate, rs)
    assert m == {
        "top1_agreement": 0.5,
        "kendall_tau": pytest.approx(1 / 3),
        "score_mse": pytest.approx(np.mean((candidate - teacher) ** 2)),
    }
    assert R.reference_metrics(teacher, rs) == {"top1_agreement": 1.0, "kendall_tau": 1.0, "score_mse": 0.0}


# -- readers ----------------------------------------------------------------------------------------
def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_ranking_reader_and_its_refusals(tmp_path):
    path = _jsonl(
        tmp_path / "rank.jsonl",
        [
            {"query": "q1", "passages": ["a", "b", "c"], "relevance": [0, 2, 1]},
            {"query": "q2", "passages": ["d"], "relevance": [0]},
        ],
    )
    rs = R.load_ranking_set(path)
    assert rs.format == "ranking" and rs.graded and rs.queries == ((0, 1, 2), (3,))
    assert rs.pairs[1] == TextPair("q1", "b") and rs.gold == (0.0, 2.0, 1.0, 0.0)
    assert rs.describe()["num_queries"] == 2 and rs.describe()["num_ranked_queries"] == 1
    assert R.load_ranking_set(path, num_samples=1).pairs == rs.pairs[:3]
    scores = np.array([0.3, 0.2, 0.1, 0.9])  # the relevant passages 2nd and 3rd; q2 has none (left out)
    ideal = 2 + 1 / math.log2(3)
    assert R.gold_metrics(scores, rs) == {
        "ndcg_at_10": pytest.approx((2 / math.log2(3) + 1 / 2) / ideal),
        "mrr_at_10": pytest.approx(0.5),
    }
    bad = {"relevance": [0, 1]}, {"relevance": [0, -1, 0]}, {"passages": "abc"}, {"relevance": [0, 0, 0]}
    messages = "3 grades", "not a grade", "list of texts", "no passage is relevant"
    for change, message in zip(bad, messages):
        _jsonl(path, [{"query": "q", "passages": ["a", "b", "c"], "relevance": [0, 1, 0], **change}])
        with pytest.raises(BadInputError, match=message):
            R.load_ranking_set(path)


def test_pairs_readers_group_queries_by_their_first_text(tmp_path, data_files):
    path = _jsonl(
        tmp_path / "p.jsonl",
        [
            {"query": "q1", "passage": "a", "label": 1},
            {"query": "q2", "passage": "b", "label": 0},
            {"query": "q1", "passage": "c", "label": 0},
        ],
    )
    rs = R.load_ranking_set(path, text_field="passage")
    assert rs.format == "pairs" and rs.queries == ((0, 2), (1,)) and rs.gold == (1.0, 0.0, 0.0) and not rs.graded
    with pytest.raises(BadInputError, match="query and text, or sentence1 and sentence2"):
        R.load_ranking_set(path)
    sts = R.load_ranking_set(data_files.pairs_jsonl)
    first = json.loads(data_files.pairs_jsonl.read_text().splitlines()[0])
    assert sts.pairs[0] == TextPair(first["sentence1"], first["sentence2"]) and sts.gold[0] == first["score"]
    stsb = R.load_ranking_set(data_files.stsb_tsv)
    assert stsb.format == "stsb" and len(stsb.pairs) == 12
    gold = np.array(sts.gold)
    assert R.gold_metrics(-gold, sts) == {"spearman": pytest.approx(-1.0), "pearson": pytest.approx(-1.0)}


def test_calibration_pairs_from_pairs_rankings_and_plain_text(tmp_path):
    (tmp_path / "c.txt").write_text("one\ntwo\n\nthree\n", encoding="utf-8")
    assert load_pairs(tmp_path / "c.txt") == [TextPair("one", "two"), TextPair("two", "three")]
    _jsonl(tmp_path / "r.jsonl", [{"query": "q", "passages": ["a", "b"]}])
    assert load_pairs(tmp_path / "r.jsonl") == [TextPair("q", "a"), TextPair("q", "b")]
    _jsonl(tmp_path / "s.jsonl", [{"sentence1": "x", "sentence2": "y", "score": 1}])
    assert load_pairs(tmp_path / "s.jsonl") == [TextPair("x", "y")]
    (tmp_path / "one.txt").write_text("alone\n", encoding="utf-8")
    with pytest.raises(BadInputError, match="pairs each text with the next"):
        load_pairs(tmp_path / "one.txt")


def test_pairs_are_encoded_as_the_tokenizer_encodes_a_pair(tiny_ranker):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_ranker))
    pairs = [TextPair("the dog runs", "a cat sat on the road"), TextPair("rain", " ".join(make_texts(3, seed=4)))]
    names = ("input_ids", "attention_mask", "token_type_ids")
    batch = TextEncoder(tok, input_names=names, max_length=24).encode(pairs)
    ref = tok(
        [p.first for p in pairs],
        [p.second for p in pairs],
        truncation="longest_first",
        max_length=24,
        padding=True,
        return_tensors="np",
    )
    for name in names:
        assert np.array_equal(batch.feed[name], ref[name])
    assert batch.feed["token_type_ids"].max() == 1 and batch.feed["input_ids"].shape[1] == 24
    padded = TextEncoder(tok, input_names=names, max_length=24).encode(pairs, pad_to=32)
    assert padded.feed["input_ids"].shape == (2, 32)


# -- the score class and the gate -------------------------------------------------------------------
def test_score_class_is_named_or_refused(tmp_path):
    from modelpress.tasks import configure_task
    from modelpress.tasks.text_ranking import resolve_score_class

    assert resolve_score_class(None, ["LABEL_0"]) == 0
    assert resolve_score_class("entailment", NLI) == 1 and resolve_score_class(2, NLI) == 2
    with pytest.raises(BadInputError, match="3 classes .*0: contradiction, 1: entailment"):
        resolve_score_class(None, NLI)
    with pytest.raises(BadInputError, match="'maybe' is not a class"):
        resolve_score_class("maybe", NLI)
    with pytest.raises(BadInputError, match="one score"):
        resolve_score_class("entailment", ["LABEL_0"])
    assert configure_task("text-ranking", {"score_class": "entailment"}).score_class == "entailment"  # no folder
    nli = tmp_path / "nli"
    nli.mkdir()
    (nli / "config.json").write_text(json.dumps({"id2label": dict(enumerate(NLI))}), encoding="utf-8")
    assert configure_task("text-ranking", {"score_class": "entailment"}, model_dir=nli).score_class == 1
    with pytest.raises(BadInputError, match="expected a class name or index"):
        configure_task("text-ranking", {"score_class": 1.5})


def test_the_gate_judges_spearman_else_ndcg_else_agreement_else_mse():
    from modelpress.validate.gate import decide

    task = "text-ranking"
    full = {"spearman": 0.80, "pearson": 0.8, "top1_agreement": 1.0, "kendall_tau": 1.0, "score_mse": 0.0}
    assert decide(task, full, {**full, "spearman": 0.79}, max_drop=0.5).metric == "spearman"
    ranked = {"ndcg_at_10": 0.70, "mrr_at_10": 0.6, "top1_agreement": 1.0, "score_mse": 0.0}
    gate = decide(task, ranked, {**ranked, "ndcg_at_10": 0.69}, max_drop=0.5)
    assert (gate.metric, gate.drop, gate.passed) == ("ndcg_at_10", pytest.approx(1.0), False)
    plain = {"top1_agreement": 1.0, "kendall_tau": 1.0, "score_mse": 0.0}
    assert decide(task, plain, {**plain, "top1_agreement": 0.996}, max_drop=0.5).passed
    mse = decide(task, {"score_mse": 0.0}, {"score_mse": 0.01}, max_drop=0.5)
    assert (mse.metric, mse.drop, mse.passed) == ("score_mse", pytest.approx(1.0), False)  # lower is better


# -- tiny cross-encoders through `modelpress run` ---------------------------------------------------
@pytest.fixture(scope="module")
def tiny_ranker(tmp_path_factory):
    from modelpress.testing import make_tiny_model

    return make_tiny_model(
        tmp_path_factory.mktemp("ranker"),
        task="text-ranking",
        labels=1,
        words=VOCAB[len(SPECIAL_TOKENS) :],
        initializer_range=INIT_RANGE,
        seed=5,
    )


@pytest.fixture(scope="module")
def tiny_nli(tmp_path_factory):
    from modelpress.testing import make_tiny_model

    return make_tiny_model(
        tmp_path_factory.mktemp("nli"),
        task="text-ranking",
        labels=NLI,
        words=VOCAB[len(SPECIAL_TOKENS) :],
        initializer_range=INIT_RANGE,
        seed=6,
    )


def _torch_logits(model_dir, pairs, max_length):
    """The PyTorch model's logits on ``pairs``, tokenized here by transformers, one batch."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    enc = tok(
        [p[0] for p in pairs],
        [p[1] for p in pairs],
        truncation=True,
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        return model(**enc).logits.numpy()


def test_a_one_score_reranker_runs_to_a_bundle_that_ranks_like_pytorch(tiny_ranker, data_files, tmp_path):
    from sklearn.metrics import ndcg_score

    from modelpress.bundle import load

    texts, rng = make_texts(240, seed=30), random.Random(31)
    rows = [
        {
            "query": texts[q],
            "passages": rng.sample(texts[40:], 8),
            "relevance": [rng.choice([0, 0, 1, 2]) for _ in range(8)],
        }
        for q in range(40)
    ]
    rows[0]["relevance"] = [0] * 8  # a query with nothing relevant: no NDCG, still ranked
    recipe = write_recipe(
        tmp_path / "rerank.toml",
        {"name": "rerank", "teacher": str(tiny_ranker), "task": "text-ranking"},
        {
            "calibration": {"data": str(data_files.calibration_txt), **FAST_CALIBRATION},
            "validate": {"eval_data": str(_jsonl(tmp_path / "rank.jsonl", rows)), **FAST_VALIDATE},
            "gate": {"max_drop": 5.0},
        },
    )
    proc = cli("run", recipe, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "out" / "rerank"
    report = json.loads((root / "report.json").read_text())
    gate = report["gate"]
    assert report["task"] == "text-ranking" and report["task_config"] == {"task": "text-ranking", "score_class": 0}
    assert (gate["metric"], gate["unit"], gate["n"]) == ("ndcg_at_10", "queries", 39)
    # the teacher's NDCG@10 from transformers' own pair encoding, scored by scikit-learn
    pairs = [(r["query"], p) for r in rows for p in r["passages"]]
    logits = _torch_logits(tiny_ranker, pairs, FAST_VALIDATE["max_length"])[:, 0].reshape(40, 8)
    ndcg = np.mean([ndcg_score([r["relevance"]], [s], k=10) for r, s in zip(rows[1:], logits[1:])])
    teacher = report["models"]["teacher"]["metrics"]
    assert teacher["ndcg_at_10"] == pytest.approx(ndcg, abs=1e-5)
    assert (teacher["top1_agreement"], teacher["kendall_tau"], teacher["score_mse"]) == (1.0, 1.0, 0.0)
    int8 = report["models"]["int8"]["metrics"]
    assert set(int8) == {"ndcg_at_10", "mrr_at_10", "top1_agreement", "kendall_tau", "score_mse"}
    assert report["uncertainty"]["int8"]["top1_agreement"]["unit"] == "queries"
    assert report["uncertainty"]["int8"]["score_mse"]["unit"] == "pairs"
    # score() and rank() of the bundle's fp32 graph are the PyTorch logits; the int8 ones stay close
    query, passages = rows[1]["query"], rows[1]["passages"]
    with load(root, model_file="model.onnx") as fp32:
        assert fp32.score([(query, p) for p in passages]) == pytest.approx(logits[1], abs=1e-4)
        ranked = fp32.rank(query, passages)
        assert [r["index"] for r in ranked] == np.argsort(-logits[1], kind="stable").tolist()
        assert [r["passage"] for r in ranked] == [passages[r["index"]] for r in ranked]
    with load(root) as bundle:
        scores = bundle.score([(query, p) for p in passages])
        assert np.abs(scores - logits[1]).max() < 0.1 and scores.shape == (8,)
        assert bundle.score((query, passages[0])) == pytest.approx(scores[:1])
        assert bundle.score([(query, p) for p in passages], sigmoid=True) == pytest.approx(1 / (1 + np.exp(-scores)))
        top = bundle.rank(query, passages, top_k=3)
        assert [r["score"] for r in top] == sorted(scores.tolist(), reverse=True)[:3]
        assert bundle.score([]).shape == (0,) and bundle.rank(query, []) == []
        with pytest.raises(TypeError, match=r"pairs\[0\] must be a \(query, passage\) pair"):
            bundle.score(["just a text"])
        with pytest.raises(BadInputError, match="text-ranking model; use rank"):
            bundle.embed(["a dog"])


def test_an_nli_style_ranker_scores_by_its_declared_class(tiny_nli, data_files, tmp_path):
    from scipy.stats import spearmanr

    from modelpress.bundle import load
    from modelpress.tasks.text_classification import softmax

    recipe = write_recipe(
        tmp_path / "nli.toml",
        {"name": "nli", "teacher": str(tiny_nli), "task": "text-ranking"},
        {
            "task_options": {"score_class": "entailment"},
            "calibration": {"data": str(data_files.pairs_jsonl), **FAST_CALIBRATION},
            "validate": {"eval_data": str(data_files.pairs_jsonl), **FAST_VALIDATE},
            "gate": {"max_drop": 5.0},
        },
    )
    proc = cli("run", recipe, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "out" / "nli"
    report = json.loads((root / "report.json").read_text())
    assert report["task_config"] == {"task": "text-ranking", "score_class": 1}
    assert (report["gate"]["metric"], report["gate"]["unit"], report["gate"]["n"]) == ("spearman", "pairs", 30)
    rows = [json.loads(line) for line in data_files.pairs_jsonl.read_text().splitlines()]
    pairs = [(r["sentence1"], r["sentence2"]) for r in rows]
    probability = softmax(_torch_logits(tiny_nli, pairs, FAST_VALIDATE["max_length"]))[:, 1]
    expected = spearmanr(probability, [r["score"] for r in rows]).statistic
    assert report["models"]["teacher"]["metrics"]["spearman"] == pytest.approx(expected, abs=1e-6)
    with load(root, model_file="model.onnx") as fp32:
        assert fp32.score(pairs[:5]) == pytest.approx(probability[:5], abs=1e-5)
        assert fp32.predict([TextPair(*p) for p in pairs[:2]]).shape == (2, 3)
        with pytest.raises(BadInputError, match="already a class probability"):
            fp32.score(pairs[:2], sigmoid=True)
    # no score class for a three-class model: refused before anything is loaded past the config
    recipe.write_text(recipe.read_text().replace('score_class = "entailment"', ""), encoding="utf-8")
    proc = cli("run", recipe, "--out", tmp_path / "out2")
    assert proc.returncode == 2 and "task_options.score_class: the model has 3 classes" in proc.stderr


def test_a_ranker_distils_on_pairs_by_score_mse(tiny_ranker, tmp_path):
    """A 1-layer subset of the ranker, trained on (query, text) pairs: its scores end far closer to
    the teacher's than where it started, and the held-out check is the score MSE."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from modelpress.distill.config import DistillConfig
    from modelpress.distill.pipeline import run_distillation
    from modelpress.distill.student import build_layer_subset

    texts = make_texts(200, seed=40)
    pairs = list(zip(texts[:100], texts[100:]))
    _jsonl(tmp_path / "train.jsonl", [{"query": a, "text": b} for a, b in pairs])
    section = {
        "data": str(tmp_path / "train.jsonl"),
        "layers": [0],
        "max_steps": 24,
        "batch_size": 16,
        "lr": 3e-3,
        "precision": "fp32",
        "eval_fraction": 0.2,
        "eval_every": 8,
        "max_length": 48,
    }
    cfg = DistillConfig.from_dict(section, base_dir=tmp_path)
    student_dir = run_distillation(cfg, teacher=str(tiny_ranker), task="text-ranking", out_dir=tmp_path / "run")
    summary = json.loads((student_dir / "distill.json").read_text())
    assert summary["kept_layers"] == [0] and summary["evaluations"]
    assert all(set(h) == {"step", "mse"} for h in summary["evaluations"])
    teacher = _torch_logits(tiny_ranker, pairs, 48)[:, 0]
    tok = AutoTokenizer.from_pretrained(str(tiny_ranker))
    enc = tok(texts[:100], texts[100:], truncation=True, max_length=48, padding=True, return_tensors="pt")
    untrained = build_layer_subset(AutoModelForSequenceClassification.from_pretrained(str(tiny_ranker)), [0]).eval()
    with torch.no_grad():
        before = untrained(**enc).logits[:, 0].numpy()
    after = _torch_logits(student_dir, pairs, 48)[:, 0]
    assert np.mean((after - teacher) ** 2) < 0.25 * np.mean((before - teacher) ** 2)
    with pytest.raises(BadInputError, match="distill.label_field: text pairs distil on the teacher's scores"):
        run_distillation(
            DistillConfig.from_dict({**section, "label_field": "label"}, base_dir=tmp_path),
            teacher=str(tiny_ranker),
            task="text-ranking",
            out_dir=tmp_path / "run2",
        )
