"""onnxruntime-genai on a text-generation bundle (issue #24): the bundle's ``genai_config.json``
lets ``onnxruntime_genai.Model(bundle)`` run the bundle's own model file, and its greedy tokens
equal our runner's on the same file (tiny Qwen3: grouped KV heads; its int4 weight-only bundle), for
the traced graph and the fused one (``task_options.decoder_graph = "fused"``).
Skipped where onnxruntime-genai is not installed (the ``genai`` extra)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import write_recipe

from modelpress.testing import make_tiny_causal_lm, random_sentences

og = pytest.importorskip("onnxruntime_genai")

PROMPTS = ("the cat sat on", "a dog", "the old film was very good and the plot")
NEW = 12


def _genai_greedy(model, ids: list[int], eos: int) -> list[int]:
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + NEW, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([ids], np.int32))
    out = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


@pytest.mark.parametrize("graph", ["traced", "fused"])
def test_onnxruntime_genai_generates_the_bundles_greedy_tokens(graph, tmp_path):
    """traced: the torch export, a past that grows; fused: GroupQueryAttention on one shared
    max-length buffer (GenAI's past_present_share_buffer), head size 16 (GQA's multiple)."""
    from modelpress.bundle import load
    from modelpress.cli import main

    head_dim = 16 if graph == "fused" else 8
    folder = make_tiny_causal_lm(tmp_path / "qwen3", family="qwen3", head_dim=head_dim)
    (tmp_path / "corpus.txt").write_text("\n".join(random_sentences(100, seed=1)) + "\n", encoding="utf-8")
    (tmp_path / "heldout.txt").write_text("\n".join(random_sentences(60, seed=9)) + "\n", encoding="utf-8")
    body = {
        "calibration": {"data": str(tmp_path / "corpus.txt"), "num_samples": 8, "max_length": 32},
        "quantize": {"mode": "weight-only", "weight_bits": 4, "block_size": 16},
        "validate": {
            "latency_runs": 1,
            "warmup_runs": 1,
            "batch_sizes": [1],
            "seq_lengths": [16],
            "decode_contexts": [24],
            "real_workload": False,
            "max_length": 32,
            "stride": 16,
            "threads": 1,
            "eval_data": str(tmp_path / "heldout.txt"),
        },
        "gate": {"max_drop": 1000.0},
        "task_options": {"decoder_graph": graph},
    }
    recipe = write_recipe(tmp_path / "lm.toml", {"name": "lm", "teacher": str(folder), "task": "text-generation"}, body)
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 0
    bundle = tmp_path / "out" / "lm"
    config = json.loads((bundle / "genai_config.json").read_text())
    decoder = config["model"]["decoder"]
    assert decoder["filename"] == "model.int4.onnx" and (bundle / decoder["filename"]).is_file()
    assert (decoder["num_key_value_heads"], decoder["num_attention_heads"], decoder["head_size"]) == (2, 4, head_dim)
    assert config["search"]["past_present_share_buffer"] is (graph == "fused")
    kinds = {n.op_type for n in onnx.load(str(bundle / decoder["filename"]), load_external_data=False).graph.node}
    assert ("GroupQueryAttention" in kinds) is (graph == "fused") and "MatMulNBits" in kinds
    genai = og.Model(str(bundle))
    with load(bundle) as lm:
        tokenizer = lm.generator.tokenizer
        eos = tokenizer.eos_token_id
        for prompt in PROMPTS:
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            ours = lm.generator.generate_ids([ids], max_new_tokens=NEW, stop_token_ids=[eos])[0]
            assert _genai_greedy(genai, ids, eos) == ours, prompt


def test_onnxruntime_genai_is_a_runtime_measured_and_gated_with_our_greedy_tokens(tmp_path):
    """``validate.runtimes = ["onnxruntime", "onnxruntime-genai"]`` on a tiny Llama (head size 16),
    decoder graph left to "auto": the fused graph, int4 weight-only; the run ends 0 and the report has
    GenAI's row, its greedy agreement and decode rows measured by ``onnxruntime_genai.Generator``
    (``GenAIRunner.kv_cache``) equal to ONNX Runtime's on the same file, its perplexity that file's
    through ONNX Runtime; the bundle opened on GenAI generates our tokens and GenAI's own greedy search's."""
    from modelpress.bundle import load
    from modelpress.cli import main
    from modelpress.runtimes.genai_runner import GenAICache

    folder = make_tiny_causal_lm(tmp_path / "llama", family="llama")
    (tmp_path / "corpus.txt").write_text("\n".join(random_sentences(100, seed=1)) + "\n", encoding="utf-8")
    (tmp_path / "heldout.txt").write_text("\n".join(random_sentences(60, seed=9)) + "\n", encoding="utf-8")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    body = {
        "calibration": {"data": str(tmp_path / "corpus.txt"), "num_samples": 8, "max_length": 32},
        "quantize": {"mode": "weight-only", "weight_bits": 4, "block_size": 16},
        "validate": {
            "latency_runs": 1,
            "warmup_runs": 1,
            "batch_sizes": [1, 2],
            "seq_lengths": [16],
            "real_workload": False,
            "max_length": 32,
            "threads": 1,
            "eval_data": str(tmp_path / "heldout.txt"),
            "runtimes": ["onnxruntime", "onnxruntime-genai"],
        },
        "gate": {"max_drop": 1000.0},
        "task_options": {"decode_contexts": [24], "stride": 16, "prompts": str(tmp_path / "prompts.txt")},
    }
    recipe = write_recipe(tmp_path / "lm.toml", {"name": "lm", "teacher": str(folder), "task": "text-generation"}, body)
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 0
    bundle = tmp_path / "out" / "lm"
    report = json.loads((bundle / "report.json").read_text())
    assert report["task_config"]["decoder_graph"] == "fused"
    assert report["task_config"]["decoder_graph_why"].startswith("auto: llama takes it")
    assert report["runtimes"] == {"onnxruntime": "int4", "onnxruntime-genai": "int4-onnxruntime-genai"}
    genai, ours = report["models"]["int4-onnxruntime-genai"], report["models"]["int4"]
    assert genai["metrics"]["greedy_agreement"] == ours["metrics"]["greedy_agreement"]
    assert genai["metrics"]["perplexity"] == pytest.approx(ours["metrics"]["perplexity"], rel=1e-6)
    assert [(r["batch_size"], r["context"]) for r in genai["decode_latency"]] == [(1, 24), (2, 24)]
    assert all(r["tokens_per_s"] > 0 for r in genai["decode_latency"])
    assert "perplexity_ratio" in report["uncertainty"]["int4-onnxruntime-genai"]  # gated: the worst decides
    model = og.Model(str(bundle))
    with load(bundle, runtime="onnxruntime-genai") as on_genai, load(bundle, runtime="onnxruntime") as on_ort:
        layout = on_genai.generator.layout
        assert isinstance(on_genai.generator.runner.kv_cache(layout, 1, 8), GenAICache)
        tokenizer = on_ort.generator.tokenizer
        batch = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
        theirs = on_genai.generator.generate_ids(batch, max_new_tokens=NEW, stop_token_ids=[])
        assert theirs == on_ort.generator.generate_ids(batch, max_new_tokens=NEW, stop_token_ids=[])
        eos = tokenizer.eos_token_id  # GenAI's own search stops there
        for ids in batch:
            alone = on_genai.generator.generate_ids([ids], max_new_tokens=NEW, stop_token_ids=[eos])[0]
            assert alone == _genai_greedy(model, ids, eos)


def test_the_genai_runner_refuses_a_folder_without_genai_config_in_one_line(tmp_path):
    from modelpress.errors import BadInputError
    from modelpress.runtimes.registry import create_runner

    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(BadInputError, match="no genai_config.json beside model.onnx"):
        with create_runner("onnxruntime-genai", tmp_path / "model.onnx"):
            pass
