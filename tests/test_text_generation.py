"""text-generation: the KV-cache export (prefill on an empty past and decode steps, parity checked
inside the export) of tiny random GPT-2, Llama and Qwen3 (grouped KV heads) models, generation on
it token for token against transformers' own ``generate``, the language-model metrics against
independent computations, and ``modelpress run`` from a recipe to a bundle that generates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_recipe

from modelpress.testing import CAUSAL_FAMILIES, make_tiny_causal_lm
from modelpress.export.exporters import export_model

PROMPTS = ("the cat sat on", "a dog", "the old film was very good and the plot")
ONCE = pytest.mark.parametrize("exported", ["gpt2"], indirect=True)


@pytest.fixture(scope="module", params=sorted(CAUSAL_FAMILIES))
def exported(request, tmp_path_factory):
    from modelpress.models import load_model_and_preprocessor
    from modelpress.tasks import configure_task

    folder = make_tiny_causal_lm(tmp_path_factory.mktemp(request.param), family=request.param)
    task = configure_task("text-generation", {"decoder_graph": "traced"})  # the traced graph of every family
    model, tokenizer = load_model_and_preprocessor(str(folder), task)
    result = export_model(task, model, tokenizer, folder / "model.onnx", opset=18, atol=1e-4)
    return request.param, model, tokenizer, result


def _hf_greedy(model, ids, n):
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
        )
    return out[0, len(ids) :].tolist()


def test_the_graph_has_the_kv_cache_layout_and_passed_parity(exported):
    import onnx

    from modelpress.kv_cache import KVLayout

    family, model, _, result = exported
    layout = KVLayout.from_config(model.config)
    graph = onnx.load(result.path).graph
    assert [i.name for i in graph.input] == [
        "input_ids",
        "attention_mask",
        "position_ids",
        *(f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")),
    ]
    assert [o.name for o in graph.output] == ["logits", *layout.present_names()]
    assert result.parity.ok and result.parity.max_abs_diff < 1e-4
    if family == "qwen3":  # grouped query attention: the cache holds 2 of the 4 heads
        assert (layout.num_kv_heads, layout.head_dim) == (2, 8)


def test_greedy_generation_equals_transformers_token_for_token(exported):
    from modelpress.generation import TextGenerator

    _, model, tokenizer, result = exported
    gen = TextGenerator(result.path, tokenizer)
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        assert gen.generate_ids([ids], max_new_tokens=16, stop_token_ids=[])[0] == _hf_greedy(model, ids, 16)
    # one left-padded batch gives what each prompt gives alone (a graph that ignored padding did not)
    batch = [tokenizer(p)["input_ids"] for p in PROMPTS]
    assert gen.generate_ids(batch, max_new_tokens=16, stop_token_ids=[]) == [
        _hf_greedy(model, ids, 16) for ids in batch
    ]


@ONCE  # the loop and the metrics are the same for every family
def test_streaming_stop_tokens_and_seeded_sampling(exported):
    from modelpress.generation import TextGenerator

    _, _, tokenizer, result = exported
    gen = TextGenerator(result.path, tokenizer)
    text = gen.generate(PROMPTS[0], max_new_tokens=20, stop_token_ids=[])
    pieces = list(gen.generate(PROMPTS[0], max_new_tokens=20, stop_token_ids=[], stream=True))
    assert len(pieces) > 1 and "".join(pieces) == text
    ids = tokenizer(PROMPTS[0])["input_ids"]
    greedy = gen.generate_ids([ids], max_new_tokens=20, stop_token_ids=[])[0]
    stop = greedy[5]
    first = greedy.index(stop)
    assert gen.generate_ids([ids], max_new_tokens=20, stop_token_ids=[stop])[0] == greedy[: first + 1]
    sampled = [
        gen.generate_ids([ids], max_new_tokens=12, do_sample=True, temperature=1.5, seed=s, stop_token_ids=[])[0]
        for s in (1, 1, 2)
    ]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]
    assert gen.generate_ids([ids], max_new_tokens=12, do_sample=True, top_k=1, stop_token_ids=[])[0] == greedy[:12]
    assert gen.generate_ids([ids], max_new_tokens=12, do_sample=True, top_p=1e-9, stop_token_ids=[])[0] == greedy[:12]


@ONCE  # the loop and the metrics are the same for every family
def test_strided_perplexity_matches_the_transformers_recipe_and_the_onnx_graph(exported):
    import onnxruntime as ort

    from modelpress.kv_cache import KVLayout
    from modelpress.measures.perplexity import next_token_fidelity, onnx_scorer, perplexity, torch_scorer

    _, model, tokenizer, result = exported
    stream = tokenizer(" ".join(PROMPTS * 6))["input_ids"]
    max_length, stride = 16, 6
    # the transformers documentation's loop, written out: labels -100 on the context part
    nlls, counted, prev_end = [], 0, 0
    for begin in range(0, len(stream), stride):
        end = min(begin + max_length, len(stream))
        trg = end - prev_end
        ids = torch.tensor([stream[begin:end]])
        labels = ids.clone()
        labels[:, :-trg] = -100
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss
        n = int((labels[:, 1:] != -100).sum())
        nlls.append(loss * n)
        counted += n
        prev_end = end
        if end == len(stream):
            break
    reference = float(torch.exp(torch.stack(nlls).sum() / counted))
    ours = perplexity(torch_scorer(model), stream, max_length=max_length, stride=stride)
    assert ours == pytest.approx(reference, rel=1e-5)
    layout = KVLayout.from_config(model.config)
    graph = onnx_scorer(ort.InferenceSession(result.path, providers=["CPUExecutionProvider"]), layout)
    assert perplexity(graph, stream, max_length=max_length, stride=stride) == pytest.approx(reference, rel=1e-4)
    fid = next_token_fidelity(torch_scorer(model), graph, stream, max_length=max_length, stride=stride)
    assert fid.top1_agreement == 1.0 and fid.mean_kl < 1e-8 and fid.positions == counted


def _calibration_feeds(tokenizer, layout) -> list[dict[str, np.ndarray]]:
    """16 packed 32-token sequences of random sentences, each on an empty past."""
    from modelpress.testing import random_sentences

    stream = tokenizer(" ".join(random_sentences(200, seed=1)))["input_ids"]
    return [
        {
            "input_ids": np.array([stream[s : s + 32]]),
            "attention_mask": np.ones((1, 32), np.int64),
            "position_ids": np.arange(32)[None],
            **layout.empty(1),
        }
        for s in range(0, 512, 32)
    ]


@ONCE
def test_the_kv_cache_graph_takes_static_int8_and_still_generates(exported, tmp_path):
    """The existing static quantizer, calibrated on packed token sequences with an empty past,
    quantizes the graph's weight MatMuls (not the attention scores); the int8 graph keeps the
    cache layout, tracks fp32 and generates."""
    import onnx
    import onnxruntime as ort

    from modelpress.kv_cache import KVLayout
    from modelpress.generation import TextGenerator
    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.static import quantize_static
    from modelpress.testing import random_sentences
    from modelpress.measures.perplexity import next_token_fidelity, onnx_scorer, perplexity

    _, model, tokenizer, result = exported
    layout = KVLayout.from_config(model.config)
    feeds = _calibration_feeds(tokenizer, layout)
    summary = quantize_static(result.path, tmp_path / "int8.onnx", feeds, QuantizeConfig())
    assert len(summary.quantized_nodes) == 4 * 2 + 1  # c_attn, attn c_proj, c_fc, mlp c_proj per layer; lm_head
    assert len(summary.fp32_nodes) == 2 * 2  # QKᵀ and attention·V stay fp32
    # GPT-2's Conv1D exports as Gemm: written as ORT's int8 op too, not left as Q/DQ that ORT ran
    # by dequantizing every weight on every call (13× slower than fp32 on the bench's GPT)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node]
    assert ops.count("MatMulIntegerToFloat") == 9 and "DequantizeLinear" not in ops and "Gemm" not in ops
    held_out = tokenizer(" ".join(random_sentences(60, seed=9)))["input_ids"]
    fp32 = onnx_scorer(ort.InferenceSession(result.path, providers=["CPUExecutionProvider"]), layout)
    int8 = onnx_scorer(ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"]), layout)
    ppl32, ppl8 = (perplexity(s, held_out, max_length=64, stride=32) for s in (fp32, int8))
    assert abs(ppl8 / ppl32 - 1) < 0.01, (ppl32, ppl8)
    assert next_token_fidelity(fp32, int8, held_out, max_length=64, stride=32).top1_agreement > 0.9
    gen = TextGenerator(tmp_path / "int8.onnx", tokenizer)
    assert len(gen.generate_ids([tokenizer(PROMPTS[0])["input_ids"]], max_new_tokens=8, stop_token_ids=[])[0]) == 8


@ONCE
@pytest.mark.parametrize("graph_format, per_channel", [("ort", True), ("qdq", True), ("qdq", False)])
def test_static_int8_reads_the_tied_embedding_from_the_int8_head(exported, tmp_path, graph_format, per_channel):
    """GPT-2 ties its embedding to its LM head: the static int8 file keeps one matrix, the head's int8
    weight, and the lookup reads its columns — each embedding row within half its int8 step (the step
    of the smoothed head's column, divided back by SmoothQuant's factor) of PyTorch's table."""
    import onnx
    import onnxruntime as ort

    from modelpress.kv_cache import KVLayout
    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.static import plan_quantization, write_quantized

    _, model, tokenizer, result = exported
    layout = KVLayout.from_config(model.config)
    feeds = _calibration_feeds(tokenizer, layout)
    plan = plan_quantization(result.path, feeds, QuantizeConfig(format=graph_format, per_channel=per_channel))
    summary = write_quantized(plan, tmp_path / "int8.onnx")
    assert summary.shared_embeddings == ("node_embedding",)
    table = model.transformer.wte.weight.detach().numpy()
    written = onnx.load(str(tmp_path / "int8.onnx"))
    assert not [i.name for i in written.graph.initializer if list(i.dims) == list(table.shape)]  # one matrix left
    head = next(t for t in plan.targets if t.node_name in plan.tied.values())
    f = plan.smoothing[head.activation]  # the head's rows were multiplied by f
    assert np.abs(f - 1).max() > 0.1  # so a lookup that forgot to divide it back would fail below
    plan.close()

    lookup = next(n for n in written.graph.node if n.name == "node_embedding").output[0]
    written.graph.output.append(onnx.helper.make_tensor_value_info(lookup, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(written.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([[0, 5, 17, table.shape[0] - 1], [3, 3, table.shape[0] // 2, 7]], np.int64)
    feed = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "position_ids": np.arange(4)[None].repeat(2, 0),
        **layout.empty(2),
    }
    rows = session.run([lookup], feed)[0]
    want = table[ids]
    peaks = np.abs(table * f).max(axis=1) if per_channel else np.full(len(table), np.abs(table * f).max())
    step = peaks / plan.cfg.weight_qmax  # the int8 step of each smoothed column (or of the whole matrix)
    bound = step[ids][..., None] / f / 2 + 1e-6
    assert rows.shape == want.shape and (np.abs(rows - want) <= bound).all()
    assert np.abs(rows - want).max() > 0  # it is the int8 matrix, not an fp32 copy


# -- the metrics, against independent computations ---------------------------------------------------
def test_scored_windows_give_torch_cross_entropy_and_kl():
    from modelpress.measures.perplexity import lm_metrics, score_window, window_sums

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, 400)
    t_logits, c_logits = 3 * rng.normal(size=(400, 50)), rng.normal(size=(400, 50))
    c_logits = t_logits + 0.1 * c_logits
    pos = np.arange(4, 399)  # positions 4..398 predict tokens 5..399
    t, c = score_window(t_logits, ids, pos), score_window(c_logits, ids, pos)
    lt, lc = (torch.log_softmax(torch.tensor(x[pos]), -1) for x in (t_logits, c_logits))
    ce_t = torch.nn.functional.cross_entropy(torch.tensor(t_logits[pos]), torch.tensor(ids[pos + 1]))
    ce_c = torch.nn.functional.cross_entropy(torch.tensor(c_logits[pos]), torch.tensor(ids[pos + 1]))
    kl = torch.nn.functional.kl_div(lc, lt, log_target=True, reduction="batchmean")
    m = lm_metrics(window_sums([t], [c]))
    assert m["perplexity"] == pytest.approx(float(torch.exp(ce_c)), rel=1e-5)
    assert m["perplexity_ratio"] == pytest.approx(float(torch.exp(ce_c - ce_t)), rel=1e-5)
    # the distributions are kept in float16: their rounding averages out over positions
    assert m["mean_kl"] == pytest.approx(float(kl), rel=3e-3)
    assert m["next_token_agreement"] == pytest.approx(float((lt.argmax(-1) == lc.argmax(-1)).double().mean()))
    assert lm_metrics(window_sums([t], [t]), reference=True)["perplexity"] == pytest.approx(float(torch.exp(ce_t)))


def test_the_gate_reads_the_perplexity_ratio_as_percent_and_its_interval_resamples_windows():
    from modelpress.tasks import configure_task
    from modelpress.validate.gate import decide
    from modelpress.measures.perplexity import ScoredWindow
    from modelpress.measures.uncertainty import interval

    task = configure_task("text-generation")
    rng = np.random.default_rng(1)

    def window(nll):
        return ScoredWindow(
            np.asarray(nll, np.float32), np.zeros(len(nll), np.int32), np.zeros((len(nll), 4), np.float16)
        )

    teacher = [window(rng.uniform(1, 4, 20)) for _ in range(30)]
    cand = [window(w.nll + 0.02) for w in teacher]  # every token 0.02 nats worse: ppl × e^0.02
    ref, got = task.reference_metrics(teacher, None), task.fidelity(teacher, cand, None)
    gate = decide(task, ref, got, max_drop=1.0)
    assert gate.metric == "perplexity_ratio"
    assert gate.drop == pytest.approx(100 * (np.exp(0.02) - 1), abs=1e-3) and not gate.passed  # 2.02 % > 1 %
    iv = interval(task.paired_units("perplexity_ratio", teacher, cand, None))
    assert iv.unit == "windows" and iv.n == 30
    assert iv.lo == pytest.approx(iv.drop, abs=1e-3) and iv.hi == pytest.approx(
        iv.drop, abs=1e-3
    )  # the same rise everywhere


def test_calibration_text_is_packed_into_sequences_with_end_of_text_between_texts(tmp_path):
    from modelpress.modalities.causal_text import CAUSAL_TEXT, pack

    folder = make_tiny_causal_lm(tmp_path / "lm")
    tok = CAUSAL_TEXT.load_preprocessor(str(folder))
    texts = ["the cat sat", "a dog runs fast", "the film was good"]
    seqs = pack(texts, tok, length=4, count=10, seed=0)
    stream = np.concatenate(seqs)
    assert [len(s) for s in seqs][:-1] == [4] * (len(seqs) - 1)
    assert len(stream) == sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)
    assert (stream == tok.eos_token_id).sum() == 3
    assert not np.array_equal(np.concatenate(pack(texts, tok, length=4, count=10, seed=1)), stream)  # another order
    assert len(pack(texts * 20, tok, length=4, count=5, seed=0)) == 5


# -- modelpress run ------------------------------------------------------------------------------
LM_VALIDATE = {
    "latency_runs": 2,
    "warmup_runs": 1,
    "batch_sizes": [1],
    "seq_lengths": [16],
    "real_workload": False,
    "max_length": 32,
    "threads": 1,
}
LM_OPTIONS = {"decode_contexts": [24], "stride": 16}  # text-generation's own keys


def _lm_recipe(tmp_path, folder, **sections):
    from modelpress.testing import random_sentences

    (tmp_path / "corpus.txt").write_text("\n".join(random_sentences(300, seed=1)) + "\n", encoding="utf-8")
    # 60 sentences: 35 windows of 32 tokens every 16, past the 30 a text-generation gate decides on
    (tmp_path / "heldout.txt").write_text("\n".join(random_sentences(60, seed=9)) + "\n", encoding="utf-8")
    body = {
        "calibration": {"data": str(tmp_path / "corpus.txt"), "num_samples": 48, "max_length": 32, "batch_size": 16},
        "task_options": dict(LM_OPTIONS),
        "validate": {**LM_VALIDATE, "eval_data": str(tmp_path / "heldout.txt")},
        "gate": {"max_drop": 2.0},
    }
    for name, extra in sections.items():
        body[name] = {**body.get(name, {}), **extra}
    return write_recipe(tmp_path / "lm.toml", {"name": "lm", "teacher": str(folder), "task": "text-generation"}, body)


@pytest.mark.parametrize("family", sorted(CAUSAL_FAMILIES))
def test_run_presses_a_causal_lm_into_a_bundle_that_generates_the_teachers_tokens(family, tmp_path):
    import json

    from modelpress.bundle import load
    from modelpress.cli import main
    from modelpress.models import load_model_and_preprocessor
    from modelpress.modalities.causal_text import token_stream
    from modelpress.tasks import configure_task
    from modelpress.measures.perplexity import perplexity, torch_scorer

    folder = make_tiny_causal_lm(tmp_path / family, family=family)
    assert main(["run", str(_lm_recipe(tmp_path, folder)), "--out", str(tmp_path / "out")]) == 0
    bundle = tmp_path / "out" / "lm"
    report = json.loads((bundle / "report.json").read_text())
    models = report["models"]
    assert list(models) == ["teacher", "onnx-fp32", "int8"]
    # the report's teacher perplexity is the one of the strided windows, computed here on its own
    model, tokenizer = load_model_and_preprocessor(str(folder), configure_task("text-generation"))
    texts = (tmp_path / "heldout.txt").read_text().splitlines()
    reference = perplexity(torch_scorer(model), token_stream(texts, tokenizer), max_length=32, stride=16)
    assert models["teacher"]["metrics"]["perplexity"] == pytest.approx(reference, rel=1e-5)
    assert models["onnx-fp32"]["metrics"]["next_token_agreement"] == 1.0
    assert models["onnx-fp32"]["metrics"]["perplexity_ratio"] == pytest.approx(1.0, abs=1e-5)
    int8 = models["int8"]["metrics"]
    assert int8["next_token_agreement"] > 0.85 and 0 < int8["mean_kl"] < 0.05
    gate = report["gate"]
    assert gate["metric"] == "perplexity_ratio" and gate["unit"] == "windows" and gate["passed"]
    assert gate["drop"] == pytest.approx(100 * (int8["perplexity_ratio"] - 1), abs=1e-3)
    for m in models.values():  # prefill rows and decode rows for every model
        assert [r["seq_len"] for r in m["latency"]] == [16]
        assert [(r["batch_size"], r["context"]) for r in m["decode_latency"]] == [(1, 24)]
    assert set(report["ratios"]["int8"]) == {"b1xs16_p50", "decode_b1xc24_p50"}
    assert "## Decode" in (bundle / "report.md").read_text()
    # the bundle generates; on its fp32 graph it gives the teacher's greedy tokens
    with load(bundle) as lm:
        assert isinstance(lm.generate(PROMPTS[0], max_new_tokens=6), str)
    with load(bundle, model_file="model.onnx") as lm:
        for prompt in PROMPTS:
            ids = tokenizer(prompt)["input_ids"]
            assert lm.generator.generate_ids([ids], max_new_tokens=12, stop_token_ids=[])[0] == _hf_greedy(
                model, ids, 12
            )


def test_greedy_agreement_on_eval_prompts_is_measured_gated_and_matches_transformers_generate(tmp_path, capsys):
    import json

    from modelpress.cli import main
    from modelpress.generation import TextGenerator
    from modelpress.models import load_model_and_preprocessor
    from modelpress.tasks import configure_task
    from modelpress.testing import random_sentences

    folder = make_tiny_causal_lm(tmp_path / "gpt2", family="gpt2")
    # 30 prompts: the fewest a text-generation gate decides on
    prompts = [
        *PROMPTS,
        "my friend said that",
        "there is",
        *(" ".join(s.split()[:3]) for s in random_sentences(25, seed=4, min_words=3)),
    ]
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8"
    )
    # batch 1: each prompt on its own, as the independent reference below runs it
    recipe = _lm_recipe(
        tmp_path,
        folder,
        task_options={"prompts": str(tmp_path / "prompts.jsonl"), "generation_tokens": 10},
        validate={"batch_size": 1},
        gate={"metric": "greedy_agreement", "max_drop": 100.0},
    )
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 0
    bundle = tmp_path / "out" / "lm"
    report = json.loads((bundle / "report.json").read_text())
    models = report["models"]
    assert report["eval"]["num_prompts"] == len(prompts)
    assert models["teacher"]["metrics"]["greedy_agreement"] == 1.0
    # the teacher's continuations from transformers' generate; the int8 graph's from the bundle's loop
    model, tokenizer = load_model_and_preprocessor(str(folder), configure_task("text-generation"))
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    teacher = [_hf_greedy(model, row, 10) for row in ids]
    for name, graph in (("onnx-fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        made = TextGenerator(bundle / graph, tokenizer).generate_ids(ids, max_new_tokens=10, stop_token_ids=[])
        same = sum(int(a == b) for t, c in zip(teacher, made) for a, b in zip(t, c))
        assert models[name]["metrics"]["greedy_agreement"] == pytest.approx(same / (10 * len(prompts)), abs=1e-6)
    assert models["onnx-fp32"]["metrics"]["greedy_agreement"] == 1.0
    gate = report["gate"]
    assert gate["metric"] == "greedy_agreement" and gate["unit"] == "prompts" and gate["n"] == len(prompts)
    assert gate["drop"] == pytest.approx(100 * (1 - models["int8"]["metrics"]["greedy_agreement"]), abs=1e-3)
    lo, hi = gate["drop_ci95"]
    assert lo <= gate["drop"] <= hi
    # a prompts record without the field, and the gated metric without prompts: one line, exit 2
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "a"}) + "\n", encoding="utf-8")
    bad = _lm_recipe(tmp_path, folder, task_options={"prompts": str(tmp_path / "bad.jsonl")})
    assert main(["run", str(bad), "--out", str(tmp_path / "out2")]) == 2
    assert "bad.jsonl" in capsys.readouterr().err.strip().splitlines()[-1]
    too_long = _lm_recipe(
        tmp_path, folder, task_options={"prompts": str(tmp_path / "prompts.jsonl"), "generation_tokens": 100000}
    )
    assert main(["run", str(too_long), "--out", str(tmp_path / "out2")]) == 2
    assert "task_options.prompts (longest prompt + generation_tokens): 1000" in capsys.readouterr().err
    unmeasured = _lm_recipe(tmp_path, folder, gate={"metric": "greedy_agreement"})
    assert main(["run", str(unmeasured), "--out", str(tmp_path / "out2")]) == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == "modelpress: error: gate.metric: greedy_agreement is measured only with task_options.prompts set"
    )


@ONCE
def test_left_padded_batches_of_prompts_continue_as_each_prompt_alone(exported):
    """Validation batches prompts of different lengths (left-padded): the teacher's continuations,
    on its own cache, equal transformers' generate of each prompt alone."""
    from modelpress.fileio import graph_input_shapes
    from modelpress.modalities.causal_text import CAUSAL_TEXT
    from modelpress.tasks import configure_task
    from modelpress.tasks.greedy_agreement import continue_greedily
    from modelpress.validate.stage import open_predictor

    _, model, tokenizer, result = exported
    shapes = graph_input_shapes(result.path)
    encoder = CAUSAL_TEXT.encoder(tokenizer, input_names=tuple(shapes), max_length=32, input_shapes=shapes)
    teacher = open_predictor("torch", model, task=configure_task("text-generation"), encoder=encoder, name="teacher")
    prompts = [tokenizer(p)["input_ids"] for p in (*PROMPTS, "there is")]
    made = continue_greedily(teacher, prompts, new_tokens=8, batch_size=4)
    assert [list(t) for t in made.tokens] == [_hf_greedy(model, ids, 8) for ids in prompts]
    assert len({len(p) for p in prompts}) > 1  # the batch was padded


def test_a_layer_subset_decoder_is_distilled_and_reported_beside_its_start(tmp_path):
    import json

    from modelpress.cli import main

    from modelpress.generation import TextGenerator
    from modelpress.models import load_model_and_preprocessor
    from modelpress.tasks import configure_task

    folder = make_tiny_causal_lm(tmp_path / "gpt2", family="gpt2")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    recipe = _lm_recipe(
        tmp_path,
        folder,
        distill={
            "data": str(tmp_path / "corpus.txt"),
            "num_layers": 1,
            "epochs": 2,
            "batch_size": 16,
            "max_length": 32,
            "layer_selection": "spread",
        },
        task_options={"prompts": str(tmp_path / "prompts.txt"), "generation_tokens": 6},
        gate={"max_drop": 50.0},
    )
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 0
    models = json.loads((tmp_path / "out" / "lm" / "report.json").read_text())["models"]
    assert list(models) == ["teacher", "untrained-subset-fp32", "student-onnx-fp32", "int8"]
    # the 2-layer teacher generates on its own cache beside the 1-layer student graph: its
    # continuations are transformers' own, the student's its graph's, prompt by prompt
    model, tokenizer = load_model_and_preprocessor(str(folder), configure_task("text-generation"))
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    made = TextGenerator(tmp_path / "out" / "lm" / "model.onnx", tokenizer).generate_ids(
        ids, max_new_tokens=6, stop_token_ids=[]
    )
    same = sum(int(a == b) for row, m in zip(ids, made) for a, b in zip(_hf_greedy(model, row, 6), m))
    assert models["student-onnx-fp32"]["metrics"]["greedy_agreement"] == pytest.approx(same / (6 * len(ids)), abs=1e-6)
    start, trained = models["untrained-subset-fp32"]["metrics"], models["student-onnx-fp32"]["metrics"]
    assert trained["mean_kl"] < 0.7 * start["mean_kl"], (start, trained)
    assert trained["perplexity"] < start["perplexity"]
    assert json.loads((tmp_path / "out" / "lm" / "student" / "config.json").read_text())["n_layer"] == 1


def test_unusable_language_model_inputs_are_one_line_and_exit_2(tmp_path, capsys):
    from modelpress.cli import main

    folder = make_tiny_causal_lm(tmp_path / "gpt2", family="gpt2")
    recipe = _lm_recipe(tmp_path, folder, task_options={"stride": 64})
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == "modelpress: error: task_options.stride: 64 is more than validate.max_length (32)"
    )
    (tmp_path / "blank.txt").write_text("\n\n", encoding="utf-8")
    recipe = _lm_recipe(tmp_path, folder, calibration={"data": str(tmp_path / "blank.txt")})
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == f"modelpress: error: {tmp_path / 'blank.txt'}: contains no records"
    )
    assert not (tmp_path / "out" / "lm").exists()


def test_engines_the_task_lacks_are_refused_at_load(tmp_path):
    from modelpress.errors import BadInputError
    from modelpress.recipe import load_recipe

    top = {"name": "lm", "teacher": str(tmp_path), "task": "text-generation"}
    with pytest.raises(BadInputError, match=r"\[engine\]: text-generation has no TensorRT engine yet"):
        load_recipe(write_recipe(tmp_path / "trt.toml", top, {"engine": {"enabled": True}}))


def test_a_causal_lm_bundle_ships_and_generates_on_openvino_too(tmp_path):
    """``validate.runtimes = ["onnxruntime", "openvino"]``: the IR of the same int8 plan, with its KV
    cache, is measured (perplexity windows, decode steps) and gated beside ONNX Runtime's graph, and
    the bundle generates on it; OpenVINO's fp32 IR of the graph gives transformers' greedy tokens."""
    import json

    from modelpress.bundle import load
    from modelpress.cli import main
    from modelpress.generation import TextGenerator
    from modelpress.models import load_model_and_preprocessor
    from modelpress.runtimes.openvino_runner import OpenVINORunner, convert_to_ir
    from modelpress.tasks import configure_task

    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    folder = make_tiny_causal_lm(tmp_path / "llama", family="llama")
    recipe = _lm_recipe(tmp_path, folder, validate={"runtimes": ["onnxruntime", "openvino"]})
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 0
    bundle = tmp_path / "out" / "lm"
    report = json.loads((bundle / "report.json").read_text())
    assert report["runtimes"] == {"onnxruntime": "int8", "openvino": "int8-openvino"}
    ov, ort_int8 = report["models"]["int8-openvino"], report["models"]["int8"]["metrics"]
    assert ov["metrics"]["next_token_agreement"] > 0.85 and 1e-6 < ov["metrics"]["mean_kl"] < 0.05  # int8, not fp32
    assert abs(ov["metrics"]["perplexity_ratio"] - ort_int8["perplexity_ratio"]) < 0.01
    assert [(r["batch_size"], r["context"]) for r in ov["decode_latency"]] == [(1, 24)]
    assert "perplexity_ratio" in report["uncertainty"]["int8-openvino"]  # gated too: the worst decides
    with load(bundle, runtime="openvino") as lm:
        assert len(lm.generator.generate_ids([[1, 2, 3]], max_new_tokens=5, stop_token_ids=[])[0]) == 5
    model, tokenizer = load_model_and_preprocessor(str(folder), configure_task("text-generation"))
    xml = convert_to_ir(bundle / "model.onnx", tmp_path / "fp32" / "model.xml")
    with OpenVINORunner(xml, threads=1) as runner:
        gen = TextGenerator(runner, tokenizer, layout=lm.encoder.layout)
        for prompt in PROMPTS:
            ids = tokenizer(prompt)["input_ids"]
            assert gen.generate_ids([ids], max_new_tokens=10, stop_token_ids=[])[0] == _hf_greedy(model, ids, 10)


def test_text_generation_keys_in_validate_are_read_for_one_release_with_one_warning(tmp_path, caplog):
    """0.x wrote text-generation's own keys in [validate]: they are read as [task_options], the
    recipe says so in one WARNING line; both spellings at once are refused in one line."""
    import logging

    from modelpress.errors import BadInputError
    from modelpress.recipe import load_recipe
    from modelpress.tasks import configure_task

    top = {"name": "lm", "teacher": "unused", "task": "text-generation"}
    old = write_recipe(tmp_path / "old.toml", top, {"validate": {"stride": 16, "decode_contexts": [24]}})
    with caplog.at_level(logging.WARNING, logger="modelpress"):
        recipe = load_recipe(old)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("validate.stride, validate.decode_contexts: deprecated")
    task = configure_task(recipe.task, recipe.task_options)
    assert (task.stride, task.decode_contexts) == (16, (24,))
    assert recipe.written("task_options.decode_contexts")  # written, so refused (not clipped) when too long
    both = write_recipe(tmp_path / "both.toml", top, {"validate": {"stride": 16}, "task_options": {"stride": 8}})
    with pytest.raises(BadInputError, match=r"^validate.stride: also given as task_options.stride"):
        load_recipe(both)
    # another task has no such option: the key stays unknown in [validate]
    fe = write_recipe(tmp_path / "fe.toml", {**top, "task": "feature-extraction"}, {"validate": {"stride": 16}})
    with pytest.raises(BadInputError, match=r"^validate.stride: unknown key"):
        load_recipe(fe)


def test_a_candidates_outputs_keep_kl_sums_not_distributions_and_give_the_same_metrics_and_intervals():
    from modelpress.measures.perplexity import score_window
    from modelpress.measures.uncertainty import interval
    from modelpress.tasks import configure_task
    from modelpress.tasks.text_generation import LMOutputs

    task = configure_task("text-generation")
    rng = np.random.default_rng(3)
    teacher, cand = [], []
    for _ in range(30):
        ids = rng.integers(0, 60, 33)
        t_logits = 3 * rng.normal(size=(33, 60))
        pos = np.arange(16, 32)
        teacher.append(score_window(t_logits, ids, pos))
        cand.append(score_window(t_logits + 0.3 * rng.normal(size=t_logits.shape), ids, pos))
    t, c = LMOutputs(tuple(teacher)), LMOutputs(tuple(cand))
    reduced = task.reduce_outputs(t, c)
    assert all(w.logprobs is None and w.kl is not None for w in reduced.windows)
    assert task.fidelity(t, reduced, None) == pytest.approx(task.fidelity(t, c, None), rel=1e-12, abs=1e-12)
    assert task.fidelity(t, c, None)["mean_kl"] > 0
    for metric in ("perplexity_ratio", "perplexity", "next_token_agreement", "mean_kl"):
        before, after = (interval(task.paired_units(metric, t, x, None)).to_dict() for x in (c, reduced))
        assert after == before, metric


def test_a_large_teacher_runs_alone_and_closes_before_any_graph_opens_with_the_same_metrics(tmp_path, monkeypatch):
    import json

    import modelpress.validate.stage as stage
    from modelpress.cli import main

    folder = make_tiny_causal_lm(tmp_path / "gpt2", family="gpt2")
    recipe = _lm_recipe(tmp_path, folder)
    events = []
    plain_open = stage.open_predictor

    def logged_open(runtime, source, **kw):
        predictor = plain_open(runtime, source, **kw)
        events.append(("open", kw["name"]))
        close = predictor.runner.close
        predictor.runner.close = lambda: (events.append(("close", kw["name"])), close())[1]
        return predictor

    monkeypatch.setattr(stage, "open_predictor", logged_open)

    def report(out):
        events.clear()
        assert main(["run", str(recipe), "--out", str(tmp_path / out)]) == 0
        return json.loads((tmp_path / out / "lm" / "report.json").read_text())

    interleaved = report("interleaved")
    assert not interleaved["teacher_timed_apart"] and events.index(("close", "teacher")) > 2
    monkeypatch.setattr(stage, "TEACHER_APART_BYTES", 0)  # the tiny teacher counts as large
    apart = report("apart")
    assert apart["teacher_timed_apart"]
    # the teacher is closed before any graph opens: its weights and a graph's are never both in use
    assert events[:2] == [("open", "teacher"), ("close", "teacher")] and len(events) > 2
    assert list(apart["models"]) == list(interleaved["models"]) == ["teacher", "onnx-fp32", "int8"]
    for name, m in apart["models"].items():
        assert m["metrics"] == pytest.approx(interleaved["models"][name]["metrics"], abs=1e-6), name
        assert [r["seq_len"] for r in m["latency"]] == [16] and m["decode_latency"], name
    assert apart["uncertainty"] == interleaved["uncertainty"]
    assert set(apart["ratios"]["int8"]) == {"b1xs16_p50", "decode_b1xc24_p50"}
