"""The openvino-genai runtime: a text-generation bundle's ``openvino_genai/`` folder opens in
``openvino_genai.LLMPipeline`` and generates the greedy tokens of our runner on the same stateful
graph, and of transformers on the fp32 graph; the runner's state follows the feeds validation makes
(a prefill, decode steps, one step timed again and again, a past of real tensors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_text_generation import PROMPTS, _hf_greedy, _lm_recipe

from modelpress.testing import make_tiny_causal_lm

pytest.importorskip("openvino", reason="the openvino extra is not installed")
og = pytest.importorskip("openvino_genai", reason="the openvino-genai extra is not installed")
pytest.importorskip("openvino_tokenizers", reason="the openvino-genai extra is not installed")


def _pipeline_greedy(folder, ids: list[int], n: int, *, reference: list[int]) -> list[int]:
    """LLMPipeline's greedy ``n`` new tokens from token ids. Its end-of-sequence token would stop
    it (and ``ignore_eos`` drops it from the output): it is set to one the reference never makes."""
    import openvino as ov

    from modelpress.runtimes.openvino_genai_runner import PIPELINE_PROPERTIES

    pipe = og.LLMPipeline(str(folder), "CPU", **PIPELINE_PROPERTIES)
    cfg = pipe.get_generation_config()
    cfg.max_new_tokens = cfg.min_new_tokens = n
    cfg.do_sample = False
    cfg.stop_token_ids = set()
    cfg.eos_token_id = min(set(range(len(reference) + 1)) - set(reference))
    inputs = og.TokenizedInputs(ov.Tensor(np.array([ids], np.int64)), ov.Tensor(np.ones((1, len(ids)), np.int64)))
    return [int(t) for t in pipe.generate(inputs, cfg).tokens[0]]


@pytest.fixture(scope="module")
def fp32_folder(tmp_path_factory):
    """A tiny Qwen3 (grouped KV heads), its fp32 export as a GenAI folder."""
    from modelpress.export.exporters import export_model
    from modelpress.models import load_model_and_preprocessor
    from modelpress.runtimes.openvino_genai_folder import write_genai_folder
    from modelpress.runtimes.openvino_runner import convert_to_ir
    from modelpress.tasks import configure_task

    tmp = tmp_path_factory.mktemp("qwen3")
    folder = make_tiny_causal_lm(tmp / "model", family="qwen3")
    task = configure_task("text-generation")
    model, tokenizer = load_model_and_preprocessor(str(folder), task)
    onnx_path = export_model(task, model, tokenizer, tmp / "model.onnx", opset=18, atol=1e-4).path
    xml = convert_to_ir(onnx_path, tmp / "ir" / "model.xml")
    return model, tokenizer, xml, write_genai_folder(xml, tmp / "genai", folder)


def test_llmpipeline_and_our_runner_on_the_fp32_folder_give_transformers_greedy_tokens(fp32_folder):
    from modelpress.generation import TextGenerator
    from modelpress.kv_cache import KVLayout
    from modelpress.runtimes.openvino_genai_runner import OpenVINOGenAIRunner

    model, tokenizer, _, folder = fp32_folder
    assert {p.name for p in folder.iterdir()} >= {
        "openvino_model.xml",
        "openvino_model.bin",
        "openvino_tokenizer.xml",
        "openvino_detokenizer.xml",
        "generation_config.json",
    }
    batch = [tokenizer(p)["input_ids"] for p in PROMPTS]
    expected = [_hf_greedy(model, ids, 12) for ids in batch]
    for ids, want in zip(batch, expected):
        assert _pipeline_greedy(folder, ids, 12, reference=want) == want
    with OpenVINOGenAIRunner(folder / "openvino_model.xml", threads=1) as runner:
        gen = TextGenerator(runner, tokenizer, layout=KVLayout.from_config(model.config))
        assert gen.generate_ids(batch, max_new_tokens=12, stop_token_ids=[]) == expected  # left-padded batch
        assert gen.generate_ids(batch[:1], max_new_tokens=12, stop_token_ids=[]) == expected[:1]  # a new prefill
    # its tokenizer IR is the bundle's tokenizer: text in, the same text out
    pipe = og.LLMPipeline(str(folder), "CPU")
    assert list(pipe.get_tokenizer().encode(PROMPTS[0]).input_ids.data[0]) == tokenizer(PROMPTS[0])["input_ids"]


def test_the_runners_state_follows_repeated_steps_and_a_loaded_past(fp32_folder):
    """One decode step fed again (validation's decode timing) gives the same logits as the first
    time; a past of real tensors gives what the stateless graph gives on it."""
    from modelpress.kv_cache import KVLayout, past_from_present, position_ids
    from modelpress.runtimes.openvino_genai_runner import OpenVINOGenAIRunner
    from modelpress.runtimes.openvino_runner import OpenVINORunner

    model, _, xml, folder = fp32_folder
    layout = KVLayout.from_config(model.config)
    rng = np.random.default_rng(0)
    mask = np.ones((2, 9), np.int64)
    mask[1, :3] = 0
    prefill = {
        "input_ids": rng.integers(5, 30, (2, 8)),
        "attention_mask": mask[:, :8],
        "position_ids": position_ids(mask[:, :8], 8),
        **layout.empty(2),
    }

    def step(out):
        return {
            "input_ids": rng.integers(5, 30, (2, 1)),
            "attention_mask": mask,
            "position_ids": position_ids(mask, 1),
            **past_from_present(out),
        }

    with OpenVINORunner(xml, threads=1) as plain, OpenVINOGenAIRunner(folder / "openvino_model.xml") as stateful:
        want = plain.run(prefill)
        got = stateful.run(prefill)
        np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-5)
        assert got["present.0.key"].shape == want["present.0.key"].shape
        feed = step(got)
        first = stateful.run(feed)["logits"]
        again = stateful.run(feed)["logits"]  # the state is cut back to the fed past
        real = plain.run({**feed, **past_from_present(want)})["logits"]
        np.testing.assert_allclose(again, first, atol=1e-6)
        np.testing.assert_allclose(first, real, atol=1e-5)
        loaded = stateful.run({**feed, **past_from_present(want)})["logits"]  # real tensors: loaded
        np.testing.assert_allclose(loaded, real, atol=1e-5)


def test_a_bundle_ships_the_genai_folder_measured_and_gated_and_llmpipeline_matches_our_runner(tmp_path):
    """``validate.runtimes = ["onnxruntime", "openvino-genai"]``: the stateful IR of the int8 plan is
    measured (windows, decode steps) and gated; LLMPipeline on the bundle's folder makes our runner's
    greedy tokens on it."""
    from modelpress.bundle import load
    from modelpress.cli import main

    folder = make_tiny_causal_lm(tmp_path / "llama", family="llama")
    recipe = _lm_recipe(tmp_path, folder, validate={"runtimes": ["onnxruntime", "openvino-genai"]})
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 0
    bundle = tmp_path / "out" / "lm"
    report = json.loads((bundle / "report.json").read_text())
    assert report["runtimes"] == {"onnxruntime": "int8", "openvino-genai": "int8-openvino-genai"}
    ov_row, ort_int8 = report["models"]["int8-openvino-genai"], report["models"]["int8"]["metrics"]
    assert ov_row["metrics"]["next_token_agreement"] > 0.85 and 1e-6 < ov_row["metrics"]["mean_kl"] < 0.05
    assert abs(ov_row["metrics"]["perplexity_ratio"] - ort_int8["perplexity_ratio"]) < 0.01
    assert [(r["batch_size"], r["context"]) for r in ov_row["decode_latency"]] == [(1, 24)]
    assert "perplexity_ratio" in report["uncertainty"]["int8-openvino-genai"]
    with load(bundle, runtime="openvino-genai") as lm:
        for prompt in PROMPTS:
            ids = lm.encoder.tokenizer(prompt)["input_ids"]
            ours = lm.generator.generate_ids([ids], max_new_tokens=10, stop_token_ids=[])[0]
            assert _pipeline_greedy(bundle / "openvino_genai", ids, 10, reference=ours) == ours


def test_a_task_without_generate_is_refused_in_one_line(tmp_path):
    from conftest import write_recipe

    from modelpress.errors import BadInputError
    from modelpress.recipe import load_recipe

    top = {"name": "fe", "teacher": str(tmp_path), "task": "feature-extraction"}
    path = write_recipe(tmp_path / "fe.toml", top, {"validate": {"runtimes": ["openvino-genai"]}})
    with pytest.raises(BadInputError, match=r"^validate.runtimes: openvino-genai runs only tasks with generate\(\)"):
        load_recipe(path)
