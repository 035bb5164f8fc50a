"""A gate CI can trust: the drop's paired bootstrap interval against a bootstrap written here,
McNemar against hand computation, the three policies, the "too small to decide" line, interleaved
latency, deterministic int8, calibration seeds, and a planted-regression suite whose true drops are
computed here, outside modelpress, from ONNX Runtime and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from modelpress.measures import uncertainty as U
from modelpress.validate.gate import decide, gate_report


def _plain_bootstrap(t, c, gold, resamples=2000, seed=1):
    """An independent percentile bootstrap of the Spearman drop: a plain loop over resamples."""
    rng = np.random.default_rng(seed)
    n = len(gold)
    drops = []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        drops.append(100 * (spearmanr(t[idx], gold[idx]).statistic - spearmanr(c[idx], gold[idx]).statistic))
    return np.percentile(drops, [2.5, 97.5])


def test_the_spearman_interval_matches_a_plain_bootstrap():
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 600)
    t = gold + rng.normal(0, 1.0, 600)
    c = t + rng.normal(0, 0.6, 600)  # a candidate that drifts from the teacher
    iv = U.interval(U.PairedUnits(U.as_arrays(t, c, gold), U.spearman_drop(), "pairs"))
    ref_lo, ref_hi = _plain_bootstrap(t, c, gold)
    assert iv.n == 600 and iv.unit == "pairs"
    assert iv.drop == pytest.approx(100 * (spearmanr(t, gold).statistic - spearmanr(c, gold).statistic), abs=1e-4)
    assert abs(iv.width - (ref_hi - ref_lo)) / (ref_hi - ref_lo) < 0.10
    assert iv.lo < iv.drop < iv.hi
    # seeded: the same data give the same interval
    assert U.interval(U.PairedUnits(U.as_arrays(t, c, gold), U.spearman_drop(), "pairs")) == iv


def test_mcnemar_and_the_accuracy_interval():
    # 10 texts the teacher gets right and the candidate wrong, 2 the other way round, 88 agree
    t = np.array([1] * 10 + [0] * 2 + [1] * 60 + [0] * 28)
    c = np.array([0] * 10 + [1] * 2 + [1] * 60 + [0] * 28)
    iv = U.interval(U.PairedUnits(U.as_arrays(t, c), U.paired_mean_drop(), "texts", discordant=(10, 2)))
    assert iv.drop == pytest.approx(8.0)
    # exact two-sided binomial test on the 12 discordant texts: 2 · P(X ≤ 2 | n = 12, p = ½)
    assert iv.mcnemar_p == pytest.approx(2 * (1 + 12 + 66) / 2**12, rel=1e-5)
    assert iv.lo > 0  # the drop is real at this size


@pytest.mark.parametrize(
    "policy, ci, drop, passed",
    [
        ("point", (-0.2, 0.9), 0.3, True),
        ("point", (0.1, 0.9), 0.6, False),
        ("confident", (-0.2, 0.9), 0.3, False),
        ("confident", (-0.2, 0.4), 0.1, True),
        ("lenient", (0.2, 0.9), 0.6, True),
        ("lenient", (0.55, 0.9), 0.7, False),
    ],
)
def test_policies(policy, ci, drop, passed):
    teacher = {"spearman": 0.80}
    cand = {"spearman": 0.80 - drop / 100}
    iv = {"spearman": {"n": 400, "unit": "pairs", "drop_ci95": list(ci), "method": "m", "mcnemar_p": None}}
    g = decide("feature-extraction", teacher, cand, max_drop=0.5, policy=policy, intervals=iv)
    assert g.passed is passed and g.drop_ci95 == ci and g.policy == policy
    assert f"[{ci[0]:.2f}, {ci[1]:.2f}] points (95% paired bootstrap, n=400 pairs" in g.line()


def test_an_interval_wider_than_max_drop_says_the_eval_set_is_too_small():
    iv = {"accuracy": {"n": 300, "unit": "texts", "drop_ci95": [-1.0, 2.0], "method": "m", "mcnemar_p": 0.5}}
    g = decide("text-classification", {"accuracy": 0.9}, {"accuracy": 0.895}, max_drop=1.0, intervals=iv)
    assert g.passed and "too small to decide at max_drop 1.00" in g.note
    assert f"about {math.ceil(300 * 3.0**2)} would narrow it" in g.note and g.note in g.line()
    assert (
        decide("text-classification", {"accuracy": 0.9}, {"accuracy": 0.895}, max_drop=5.0, intervals=iv).note is None
    )


def test_the_latency_condition():
    lat = {"b1xs16_p50": 0.4, "b32xs16_p50": 0.7}
    m = {"mean_cosine": 1.0}
    ok = decide("feature-extraction", m, m, max_drop=0.5, latency=lat, max_latency_ratio=0.8)
    assert ok.passed and ok.latency_shape == "b32xs16" and ok.latency_ratio == 0.7  # the last shape by default
    slow = decide("feature-extraction", m, m, max_drop=0.5, latency=lat, max_latency_ratio=0.5)
    assert not slow.passed and "latency b32xs16 0.700x teacher (max 0.500)" in slow.line()
    assert decide(
        "feature-extraction", m, m, max_drop=0.5, latency=lat, max_latency_ratio=0.5, latency_shape="b1xs16"
    ).passed
    from modelpress.errors import BadInputError

    with pytest.raises(BadInputError, match="gate.latency_shape: 'b8xs16' was not timed"):
        decide("feature-extraction", m, m, max_drop=0.5, latency=lat, max_latency_ratio=0.5, latency_shape="b8xs16")


class _PaddingEncoder:
    """A text-like encoder: zeros padded to the asked length (what timing needs of an encoder)."""

    def encode(self, examples, *, pad_to=None):
        from modelpress.modalities import Batch

        return Batch({"input_ids": np.zeros((len(examples), pad_to), np.int64)})

    def timing_lengths(self, seq_lengths):
        return tuple(seq_lengths)

    def length_of(self, feed):
        return int(feed["input_ids"].shape[1])


def test_latency_is_timed_round_robin():
    from types import SimpleNamespace

    from modelpress.validate.compare import interleaved_latency

    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name
            self.encoder = _PaddingEncoder()

        def encode(self, examples, *, pad_to=None):
            return self.encoder.encode(examples, pad_to=pad_to)

        def predict_batch(self, batch):
            calls.append(self.name)

    cfg = SimpleNamespace(batch_sizes=(2,), seq_lengths=(8,), warmup_runs=1, latency_runs=3)
    rows = interleaved_latency([Fake("a"), Fake("b"), Fake("c")], ["x", "y"], cfg)
    assert calls == ["a", "b", "c"] * 4
    assert [r["runs"] for r in rows["b"]] == [3] and rows["a"][0]["seq_len"] == 8


def test_the_latency_budget_bounds_the_timed_rounds_but_keeps_five():
    import time
    from types import SimpleNamespace

    from modelpress.measures.latency import MIN_TIMED_ROUNDS
    from modelpress.validate.compare import interleaved_latency

    class Slow:
        name = "slow"
        encoder = _PaddingEncoder()

        def encode(self, examples, *, pad_to=None):
            return self.encoder.encode(examples, pad_to=pad_to)

        def predict_batch(self, batch):
            time.sleep(0.01)

    def runs(budget, latency_runs=1000):
        cfg = SimpleNamespace(
            batch_sizes=(1,), seq_lengths=(4,), warmup_runs=1, latency_runs=latency_runs, latency_budget_s=budget
        )
        return interleaved_latency([Slow()], ["x"], cfg)["slow"][0]["runs"]

    assert MIN_TIMED_ROUNDS <= runs(0.08) <= 12  # ~8 rounds of 10 ms fit in 80 ms
    assert runs(1e-6) == MIN_TIMED_ROUNDS  # a spent budget still times five rounds
    assert runs(1e-6, latency_runs=3) == 3  # ... unless fewer were asked for
    assert runs(0.0, latency_runs=40) == 40  # 0: no budget


def test_the_same_calibration_gives_byte_identical_int8(bert_onnx, tmp_path, data_files):
    from transformers import AutoTokenizer

    from modelpress.calibration_data.feeds import TokenizedFeed
    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.static import quantize_static

    tok = AutoTokenizer.from_pretrained(str(bert_onnx.model.path))
    feed = TokenizedFeed(
        data_files.calibration_texts, tok, batch_size=16, max_length=32, input_names=bert_onnx.result.input_names
    )
    for name in ("a.onnx", "b.onnx"):
        quantize_static(bert_onnx.onnx_path, tmp_path / name, feed, QuantizeConfig(calibration_method="percentile"))
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


# -- a planted-regression suite ------------------------------------------------------------------------
def _damaged(src, dst, *, noise=0.0, zero_head=None, seed=0):
    """A copy of an fp32 ONNX with known damage: Gaussian noise (relative to each weight's std) on
    every constant 2-D weight of the FFN, or one attention head's query weights zeroed."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    rng = np.random.default_rng(seed)
    mats = [i for i in model.graph.initializer if len(i.dims) == 2 and i.dims[0] != i.dims[1]]
    for init in mats:
        w = numpy_helper.to_array(init)
        w = w + rng.normal(0, noise * w.std(), w.shape).astype(w.dtype)
        init.CopyFrom(numpy_helper.from_array(w, init.name))
    if zero_head is not None:  # the first square weight is layer 0's query projection: zero one head's columns
        q = next(i for i in model.graph.initializer if len(i.dims) == 2 and i.dims[0] == i.dims[1])
        w = numpy_helper.to_array(q).copy()
        w[:, zero_head * 16 : (zero_head + 1) * 16] = 0
        q.CopyFrom(numpy_helper.from_array(w, q.name))
    onnx.save(model, str(dst))
    return dst


def _embed(path, tok, texts, names):
    import onnxruntime as ort

    from modelpress.tasks.feature_extraction import pool

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = []
    for start in range(0, len(texts), 16):
        enc = tok(texts[start : start + 16], padding=True, truncation=True, max_length=32, return_tensors="np")
        feed = {k: enc[k].astype(np.int64) for k in names}
        out.append(pool(s.run(None, feed)[0], feed["attention_mask"], pooling="mean", normalize=True))
    return np.concatenate(out)


def test_planted_regressions_are_judged_as_their_true_drop_says(bert_onnx, tiny_bert, tmp_path):
    """Feature extraction: gold scores = the teacher's own similarities + noise, so the teacher
    scores well; damaged copies of its ONNX lose Spearman by amounts computed here independently."""
    import json

    from conftest import FAST_VALIDATE, load_tiny, make_texts, task_for

    from modelpress.config_check import check_section
    from modelpress.modalities.text import TEXT
    from modelpress.recipe import GateConfig, ValidateConfig
    from modelpress.validate.stage import file_opener, teacher_opener, validate_stage

    model, tok = load_tiny(tiny_bert.path)
    names = bert_onnx.result.input_names
    a, b = make_texts(300, seed=31), make_texts(300, seed=32)
    ref = _embed(bert_onnx.onnx_path, tok, a + b, names)
    sims = (ref[:300] * ref[300:]).sum(1)
    gold = sims + np.random.default_rng(5).normal(0, sims.std() * 0.5, 300)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"sentence1": x, "sentence2": y, "score": float(g)}) + "\n" for x, y, g in zip(a, b, gold)),
        encoding="utf-8",
    )
    teacher_rho = spearmanr(sims, gold).statistic
    task = task_for()
    cfg = check_section(
        ValidateConfig, "validate", {"eval_data": str(pairs), **FAST_VALIDATE, "latency_runs": 1, "batch_sizes": [1]}
    )
    es = task.read_eval(pairs, cfg)
    encoder = TEXT.encoder(tok, input_names=names, max_length=32)
    max_drop = 1.0
    checked = 0
    for k, damage in enumerate(
        [
            {"noise": 0.0},
            {"noise": 0.02},
            {"noise": 0.05},
            {"noise": 0.1},
            {"noise": 0.2},
            {"noise": 0.4},
            {"zero_head": 0},
            {"zero_head": 1},
        ]
    ):
        path = _damaged(bert_onnx.onnx_path, tmp_path / f"d{k}.onnx", seed=k, **damage)
        emb = _embed(path, tok, a + b, names)
        true_drop = 100 * (teacher_rho - spearmanr((emb[:300] * emb[300:]).sum(1), gold).statistic)
        gate_cfg = check_section(GateConfig, "gate", {"max_drop": max_drop})
        report = validate_stage(
            task=task,
            cfg=cfg,
            gate_cfg=gate_cfg,
            teacher=teacher_opener(model, task=task, encoder=encoder, threads=1),
            candidates=[file_opener(path, task=task, encoder=encoder, threads=1, name="candidate")],
            eval_set=es,
            name="planted",
        )
        g = report["gate"]
        assert g["metric"] == "spearman" and g["drop"] == pytest.approx(true_drop, abs=0.02), (damage, g)
        assert g["drop_ci95"][0] <= g["drop"] <= g["drop_ci95"][1] and g["n"] == 300
        # the other policies re-decide from the same report, as `modelpress gate --policy` does
        verdicts = {policy: gate_report(report, policy=policy).passed for policy in ("point", "confident", "lenient")}
        assert verdicts["point"] == g["passed"]
        if abs(true_drop - max_drop) >= 0.2:
            checked += 1
            assert verdicts["point"] == (true_drop <= max_drop), (damage, true_drop, verdicts)
            if true_drop > max_drop:
                assert not verdicts["confident"], (damage, true_drop)
            else:
                assert verdicts["lenient"], (damage, true_drop)
    assert checked >= 6


def _logits(path, tok, texts, names):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    enc = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="np")
    return s.run(None, {k: enc[k].astype(np.int64) for k in names})[0]


def _scale_off(src, dst, factor=2.0):
    """A copy of an int8 model with one activation scale off by ``factor`` (a Q/DQ scale error)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    scale = next(i for i in model.graph.initializer if i.name.endswith("_scale") and not i.dims)
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(factor), scale.name))
    onnx.save(model, str(dst))
    return dst


def test_planted_regressions_of_a_classifier_and_a_broken_scale(tiny_bert_cls, tmp_path, data_files):
    """Text classification: gold labels = the teacher's own predictions with 10 % flipped; damaged
    copies (weight noise; an int8 model with one scale off by 2×) lose accuracy by amounts computed
    here with ONNX Runtime; the gate's drop and McNemar p match them."""
    import json

    from scipy.stats import binomtest

    from conftest import FAST_VALIDATE, load_tiny, make_texts, task_for

    from modelpress.calibration_data.feeds import TokenizedFeed
    from modelpress.config_check import check_section
    from modelpress.export.onnx_export import export_onnx
    from modelpress.modalities.text import TEXT
    from modelpress.recipe import GateConfig, ValidateConfig
    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.static import quantize_static
    from modelpress.validate.stage import file_opener, teacher_opener, validate_stage

    task = task_for("text-classification")
    model, tok = load_tiny(tiny_bert_cls.path, task)
    fp32 = export_onnx(model, tok, tmp_path / "cls.onnx", task=task)
    names = fp32.input_names
    texts = make_texts(400, seed=41)
    teacher_pred = _logits(fp32.path, tok, texts, names).argmax(-1)
    rng = np.random.default_rng(3)
    labels = np.where(rng.random(400) < 0.1, rng.integers(0, 3, 400), teacher_pred)
    data = tmp_path / "eval.jsonl"
    data.write_text(
        "".join(json.dumps({"text": t, "label": int(y)}) + "\n" for t, y in zip(texts, labels)), encoding="utf-8"
    )
    cfg = check_section(
        ValidateConfig, "validate", {"eval_data": str(data), **FAST_VALIDATE, "latency_runs": 1, "batch_sizes": [1]}
    )
    es = task.read_eval(data, cfg, model_config=model.config)
    encoder = TEXT.encoder(tok, input_names=names, max_length=32)
    int8 = tmp_path / "int8.onnx"
    quantize_static(
        fp32.path,
        int8,
        TokenizedFeed(data_files.calibration_texts, tok, batch_size=16, max_length=32, input_names=names),
        QuantizeConfig(format="qdq"),
    )
    candidates = [
        _damaged(fp32.path, tmp_path / f"n{k}.onnx", noise=noise, seed=k)
        for k, noise in enumerate((0.0, 0.1, 0.3, 0.6))
    ] + [_scale_off(int8, tmp_path / "scale.onnx", 8.0)]
    teacher_ok = teacher_pred == labels
    max_drop = 2.0
    for path in candidates:
        pred = _logits(path, tok, texts, names).argmax(-1)
        ok = pred == labels
        true_drop = 100 * (teacher_ok.mean() - ok.mean())
        b, c = int((teacher_ok & ~ok).sum()), int((~teacher_ok & ok).sum())
        report = validate_stage(
            task=task,
            cfg=cfg,
            gate_cfg=check_section(GateConfig, "gate", {"max_drop": max_drop}),
            teacher=teacher_opener(model, task=task, encoder=encoder, threads=1),
            candidates=[file_opener(path, task=task, encoder=encoder, threads=1, name="cand")],
            eval_set=es,
            name="planted",
        )
        g = report["gate"]
        assert g["metric"] == "accuracy" and g["drop"] == pytest.approx(true_drop, abs=1e-6), (path.name, g)
        assert g["mcnemar_p"] == pytest.approx(1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue, rel=1e-5)
        if abs(true_drop - max_drop) >= 0.2:
            assert g["passed"] == (true_drop <= max_drop), (path.name, true_drop, g)


def test_calibration_seed_twins_are_measured_and_the_worst_is_gated(bert_onnx, tiny_bert, tmp_path, data_files):
    from conftest import FAST_VALIDATE, load_tiny, make_texts, task_for

    from modelpress.calibration_data.feeds import TokenizedFeed
    from modelpress.config_check import check_section
    from modelpress.modalities.text import TEXT
    from modelpress.recipe import GateConfig, ValidateConfig
    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.stage import quantize_model, seed_variants
    from modelpress.validate.stage import file_opener, teacher_opener, validate_stage

    model, tok = load_tiny(tiny_bert.path)
    names = bert_onnx.result.input_names

    def feed(seed):
        return TokenizedFeed(make_texts(48, seed=100 + seed), tok, batch_size=16, max_length=32, input_names=names)

    cfg = QuantizeConfig(calibration_method="percentile", calibration_seeds=3)
    outcome = quantize_model(bert_onnx.onnx_path, tmp_path / "int8.onnx", feed(0), cfg)
    twins = seed_variants(bert_onnx.onnx_path, [(1, feed(1)), (2, feed(2))], outcome, cfg, tmp_path)
    assert [s for s, _, _ in twins] == [1, 2]
    files = [tmp_path / "int8.onnx", *(p for _, p, _ in twins)]
    assert len({f.read_bytes() for f in files}) == 3  # different samples, different ranges
    task = task_for()
    encoder = TEXT.encoder(tok, input_names=names, max_length=32)
    vcfg = check_section(ValidateConfig, "validate", {"eval_data": str(data_files.pairs_jsonl), **FAST_VALIDATE})
    report = validate_stage(
        task=task,
        cfg=vcfg,
        gate_cfg=check_section(GateConfig, "gate", {"max_drop": 50.0, "metric": "mean_cosine"}),
        teacher=teacher_opener(model, task=task, encoder=encoder, threads=1),
        candidates=[file_opener(files[0], task=task, encoder=encoder, threads=1, name="int8")],
        variants=[file_opener(p, task=task, encoder=encoder, threads=1, name=f"int8-seed{s}") for s, p, _ in twins],
        eval_set=task.read_eval(data_files.pairs_jsonl, vcfg),
        name="seeds",
    )
    seeds = report["calibration_seeds"]
    drops = {c["name"]: c["drop"] for c in seeds["candidates"]}
    assert set(drops) == {"int8", "int8-seed1", "int8-seed2"} and seeds["shipped"] == "int8"
    assert report["gate"]["candidate_name"] == seeds["judged"] == max(drops, key=drops.get)
    values = [c["value"] for c in seeds["candidates"]]
    assert seeds["spread"] == pytest.approx(max(values) - min(values), abs=1e-4)
    assert report["models"]["int8-seed1"]["latency"] == []  # twins are measured for fidelity only
