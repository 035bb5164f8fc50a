"""text-generation so far: the KV-cache export (prefill on an empty past and decode steps, parity
checked inside the export) of tiny random GPT-2, Llama and Qwen2 (grouped KV heads) models, and
generation on it, token for token against transformers' own ``generate``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_recipe

from modelpress.testing import CAUSAL_FAMILIES, make_tiny_causal_lm

PROMPTS = ("the cat sat on", "a dog", "the old film was very good and the plot")
ONCE = pytest.mark.parametrize("exported", ["gpt2"], indirect=True)


@pytest.fixture(scope="module", params=sorted(CAUSAL_FAMILIES))
def exported(request, tmp_path_factory):
    from modelpress.models import load_model_and_preprocessor
    from modelpress.tasks import configure_task

    folder = make_tiny_causal_lm(tmp_path_factory.mktemp(request.param), family=request.param)
    task = configure_task("text-generation")
    model, tokenizer = load_model_and_preprocessor(str(folder), task)
    result = task.export(model, tokenizer, folder / "model.onnx", opset=18, atol=1e-4)
    return request.param, model, tokenizer, result


def _hf_greedy(model, ids, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None)
    return out[0, len(ids):].tolist()


def test_the_graph_has_the_kv_cache_layout_and_passed_parity(exported):
    import onnx

    from modelpress.export.causal_lm import KVLayout

    family, model, _, result = exported
    layout = KVLayout.from_config(model.config)
    graph = onnx.load(result.path).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "position_ids",
                                              *(f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value"))]
    assert [o.name for o in graph.output] == ["logits", *layout.present_names()]
    assert result.parity.ok and result.parity.max_abs_diff < 1e-4
    if family == "qwen2":  # grouped query attention: the cache holds 2 of the 4 heads
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
    assert gen.generate_ids(batch, max_new_tokens=16, stop_token_ids=[]) == [_hf_greedy(model, ids, 16) for ids in batch]


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
    assert gen.generate_ids([ids], max_new_tokens=20, stop_token_ids=[stop])[0] == greedy[:first + 1]
    sampled = [gen.generate_ids([ids], max_new_tokens=12, do_sample=True, temperature=1.5, seed=s, stop_token_ids=[])[0]
               for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]
    assert gen.generate_ids([ids], max_new_tokens=12, do_sample=True, top_k=1, stop_token_ids=[])[0] == greedy[:12]
    assert gen.generate_ids([ids], max_new_tokens=12, do_sample=True, top_p=1e-9, stop_token_ids=[])[0] == greedy[:12]


@ONCE  # the loop and the metrics are the same for every family
def test_run_refuses_text_generation_in_one_line(exported, tmp_path, capsys):
    from modelpress.cli import main

    _, _, _, result = exported
    folder = str(result.path).rsplit("/", 1)[0]
    recipe = write_recipe(tmp_path / "lm.toml", {"name": "lm", "teacher": folder, "task": "text-generation"},
                          {"calibration": {"data": str(tmp_path / "corpus.txt")}})
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("modelpress: error: task: text-generation runs export only so far"), last


@ONCE  # the loop and the metrics are the same for every family
def test_strided_perplexity_matches_the_transformers_recipe_and_the_onnx_graph(exported):
    import onnxruntime as ort

    from modelpress.export.causal_lm import KVLayout
    from modelpress.validate.perplexity import next_token_fidelity, onnx_scorer, perplexity, torch_scorer

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


@ONCE
def test_the_kv_cache_graph_takes_static_int8_and_still_generates(exported, tmp_path):
    """The first step of int8 for causal LMs: the existing static quantizer, calibrated on packed
    token sequences with an empty past, quantizes the graph's weight MatMuls (not the attention
    scores); the int8 graph keeps the cache layout, tracks fp32 and generates."""
    import onnxruntime as ort

    from modelpress.export.causal_lm import KVLayout
    from modelpress.generation import TextGenerator
    from modelpress.runtimes.quantize.config import QuantizeConfig
    from modelpress.runtimes.quantize.static import quantize_static
    from modelpress.testing import random_sentences
    from modelpress.validate.perplexity import next_token_fidelity, onnx_scorer, perplexity

    _, model, tokenizer, result = exported
    layout = KVLayout.from_config(model.config)
    stream = tokenizer(" ".join(random_sentences(200, seed=1)))["input_ids"]
    feeds = [{"input_ids": np.array([stream[s:s + 32]]), "attention_mask": np.ones((1, 32), np.int64),
              "position_ids": np.arange(32)[None], **layout.empty(1)} for s in range(0, 512, 32)]
    summary = quantize_static(result.path, tmp_path / "int8.onnx", feeds, QuantizeConfig())
    assert len(summary.quantized_nodes) == 4 * 2 + 1      # c_attn, attn c_proj, c_fc, mlp c_proj per layer; lm_head
    assert len(summary.fp32_nodes) == 2 * 2               # QKᵀ and attention·V stay fp32
    held_out = tokenizer(" ".join(random_sentences(60, seed=9)))["input_ids"]
    fp32 = onnx_scorer(ort.InferenceSession(result.path, providers=["CPUExecutionProvider"]), layout)
    int8 = onnx_scorer(ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"]), layout)
    ppl32, ppl8 = (perplexity(s, held_out, max_length=64, stride=32) for s in (fp32, int8))
    assert abs(ppl8 / ppl32 - 1) < 0.01, (ppl32, ppl8)
    assert next_token_fidelity(fp32, int8, held_out, max_length=64, stride=32).top1_agreement > 0.9
    gen = TextGenerator(tmp_path / "int8.onnx", tokenizer)
    assert len(gen.generate_ids([tokenizer(PROMPTS[0])["input_ids"]], max_new_tokens=8, stop_token_ids=[])[0]) == 8
