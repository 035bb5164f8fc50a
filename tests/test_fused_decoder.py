"""The fused decoder graph (``export.fused_decoder``: GroupQueryAttention, rotary inside, fused QKV,
(Skip)SimplifiedLayerNormalization) against transformers, and the in-place KV cache our runner
decodes with (``runtimes.onnxruntime_runner.InPlaceCache``).

References are independent of the graph: transformers' own forward with its own cache (logits of a
prefill and every decode step) and its own ``generate`` (greedy tokens). Tiny Llama (llama3 rope
scaling), Qwen2 (q/k/v biases, tied head, grouped KV heads) and Qwen3 (per-head q/k norms, grouped
KV heads), head size 16 (GroupQueryAttention's multiple)."""

from __future__ import annotations

import inspect
import json
import numpy as np
import onnx
import pytest
import torch
import transformers

from modelpress.errors import BadInputError
from modelpress.export.fused_decoder import build_graph, export_fused_decoder
from modelpress.fileio import graph_input_shapes
from modelpress.generation import TextGenerator
from modelpress.kv_cache import LOGITS_TO_KEEP, KVLayout
from modelpress.runtimes.registry import create_runner
from modelpress.runtimes.onnxruntime_runner import InPlaceCache

SMALL = dict(
    vocab_size=97,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=96,
    max_position_embeddings=64,
    initializer_range=0.2,
)
FAMILIES = {
    "llama": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            **{**SMALL, "num_key_value_heads": 4},
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        )
    ),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SMALL, tie_word_embeddings=True)),
    "qwen3": lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**SMALL, head_dim=16)),
}
STEPS = 5
#: transformers 5.2x renames ``past_key_values`` to ``cache`` (the old name warns)
CACHE_ARG = (
    "cache" if "cache" in inspect.signature(transformers.LlamaForCausalLM.forward).parameters else "past_key_values"
)


class _Tokens:
    """The generator's tokenizer: only the ids it reads (no end-of-sequence: every step is made)."""

    eos_token_id = None
    pad_token_id = 0


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def fused(request, tmp_path_factory):
    torch.manual_seed(0)
    model = FAMILIES[request.param]().eval()
    if request.param == "qwen2":  # random biases: zeros would hide a bias left out
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.2)
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    export_fused_decoder(model, None, path)  # its own right-padded parity check passes first
    with create_runner("onnxruntime", path, threads=1) as runner:
        yield request.param, model, runner


def test_the_graph_is_the_fused_layout(fused):
    family, model, runner = fused
    graph = onnx.load(str(runner.model_path))
    kinds = [n.op_type for n in graph.graph.node]
    layers = model.config.num_hidden_layers
    assert kinds.count("GroupQueryAttention") == layers
    assert kinds.count("SkipSimplifiedLayerNormalization") == 2 * layers  # every norm after the first
    # q, k and v in one MatMul per layer, gate and up in another: 4 per layer (qkv, o, gate/up, down) + the head
    assert kinds.count("MatMul") == 4 * layers + 1
    assert not {"Pow", "ReduceMean", "Sqrt", "Softmax", "Concat"} & set(kinds)
    # the norms' mean and inverse deviation are never asked for: ONNX Runtime need not write them
    assert not any(any(n.output[1:3]) for n in graph.graph.node if n.op_type.startswith("SkipSimplified"))
    # a tied head reads the table through a Transpose: the file holds the matrix once
    vocab, hidden = model.get_input_embeddings().weight.shape
    tables = [i.name for i in graph.graph.initializer if sorted(i.dims) == sorted([vocab, hidden])]
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert len(tables) == (1 if tied else 2) and (kinds.count("Transpose") == 1) == tied, family


def test_logits_to_keep_runs_the_head_on_the_last_positions_only(fused, monkeypatch):
    """The overridable ``logits_to_keep`` (default 0: all positions, what validation scores) gives the
    last k positions' logits, equal to those of the full run; the LM head's MatMul sees only those rows."""
    family, model, runner = fused
    layout = KVLayout.from_config(model.config)
    prompt = np.array([[5, 17, 3, 88, 41, 9, 60]])
    full = runner.kv_cache(layout, 1, 8).run(prompt, np.ones(prompt.shape, np.int64))
    assert full.shape[1] == prompt.shape[1]
    for keep in (1, 3):
        kept = runner.kv_cache(layout, 1, 8).run(prompt, np.ones(prompt.shape, np.int64), keep)
        assert kept.shape == (1, keep, model.config.vocab_size)
        np.testing.assert_allclose(kept, full[:, -keep:], atol=1e-5, rtol=0)
    # an encoder or GenAI never has to feed it: no list of the inputs to feed names it
    assert LOGITS_TO_KEEP not in runner.input_names
    assert LOGITS_TO_KEEP not in graph_input_shapes(runner.model_path)
    assert LOGITS_TO_KEEP not in type(runner).graph_inputs(runner.model_path)
    # the generator's prefill keeps the positions from the shortest prompt's last token on (its tokens: the
    # ragged-batch test's, equal to transformers')
    seen: list[int] = []
    first = InPlaceCache._first
    monkeypatch.setattr(InPlaceCache, "_first", lambda self, feed, keep: seen.append(keep) or first(self, feed, keep))
    TextGenerator(runner, _Tokens(), layout=layout).generate_ids([[5, 6, 7, 8, 9, 10], [11, 12]], max_new_tokens=2)
    assert seen == [5]  # positions 1 (the short row's last) to 5


def test_logits_equal_transformers_on_a_prefill_and_decode_steps(fused):
    """Batch 1 through the in-place cache against transformers' own incremental decode."""
    family, model, runner = fused
    layout = KVLayout.from_config(model.config)
    prompt = torch.tensor([[5, 17, 3, 88, 41, 9, 60]])
    cache = runner.kv_cache(layout, 1, prompt.shape[1] + STEPS)
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
    ours = cache.run(prompt.numpy(), np.ones(prompt.shape, np.int64))
    np.testing.assert_allclose(ours, out.logits.numpy(), atol=1e-4, rtol=0)
    past, length = out.past_key_values, prompt.shape[1]
    steps = []
    for _ in range(STEPS):
        token = out.logits[:, -1:].argmax(-1)
        length += 1
        with torch.no_grad():
            out = model(input_ids=token, use_cache=True, **{CACHE_ARG: past})
        past = out.past_key_values
        ours = cache.run(token.numpy(), np.ones((1, length), np.int64))
        assert ours.shape == (1, 1, model.config.vocab_size)  # only the new position's logits
        np.testing.assert_allclose(ours, out.logits.numpy(), atol=1e-4, rtol=0)
        steps.append((ours, out.logits.numpy()))
    for ours, theirs in steps:  # what a step returned is its own: later steps do not overwrite it
        np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_greedy_tokens_equal_transformers_generate_on_a_ragged_batch(fused):
    """Prompts of three lengths in one batch (right-padded, each row's cache at its own length)."""
    family, model, runner = fused
    generator = TextGenerator(runner, _Tokens(), layout=KVLayout.from_config(model.config))
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [3, 4, 5, 6]]
    ours = generator.generate_ids(prompts, max_new_tokens=10, stop_token_ids=[])
    for prompt, got in zip(prompts, ours):
        with torch.no_grad():
            reference = model.generate(
                torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        assert got == reference[0, len(prompt) :].tolist()


def test_a_decode_step_writes_the_cache_in_place(fused):
    """The same buffers, at the same addresses, are every step's past and present; a step writes the
    new token's keys at each row's length, leaves the past as it was and nothing after the batch's
    width is touched (a right-padded row's padding may be written: it is past the row's length,
    never read, and the row's next token overwrites it)."""
    family, model, runner = fused
    layout = KVLayout.from_config(model.config)
    cache = runner.kv_cache(layout, 2, 12)
    addresses = [b.data_ptr() for b in cache.buffers]
    lengths = np.array([4, 2])
    cache.run(np.array([[5, 6, 7, 8], [9, 10, 0, 0]]), np.array([[1, 1, 1, 1], [1, 1, 0, 0]]))
    keys = cache.buffers[0].numpy()
    assert np.abs(keys[0, :, :4]).min() > 0 and np.abs(keys[1, :, :2]).min() > 0
    assert not keys[:, :, 4:].any()
    for step in range(3):
        before = cache.buffers[0].numpy().copy()
        width = 5 + step
        mask = (np.arange(width)[None] < (lengths + 1)[:, None]).astype(np.int64)
        cache.run(np.array([[1], [2]]), mask)
        after = cache.buffers[0].numpy()
        for row, length in enumerate(lengths):
            np.testing.assert_array_equal(after[row, :, :length], before[row, :, :length])  # the past stays put
            assert np.abs(after[row, :, length] - before[row, :, length]).min() > 0  # the new token's keys
        assert not after[:, :, width:].any()
        lengths = lengths + 1
        assert [b.data_ptr() for b in cache.buffers] == addresses
        assert [o.data_ptr() for o in cache.binding.get_outputs()[1:]] == addresses  # present is the past's buffer


def test_the_generator_decodes_in_place(fused, monkeypatch):
    """generate makes one cache for the whole run: the traced graph's path (feeding present back)
    is never taken."""
    family, model, runner = fused
    made, runs = [], []
    real_cache, real_run = runner.kv_cache, runner.run
    monkeypatch.setattr(runner, "kv_cache", lambda *a: made.append(a) or real_cache(*a))
    monkeypatch.setattr(runner, "run", lambda feed: runs.append(feed) or real_run(feed))
    generator = TextGenerator(runner, _Tokens(), layout=KVLayout.from_config(model.config))
    generator.generate_ids([[5, 6, 7]], max_new_tokens=6, stop_token_ids=[])
    assert len(made) == 1 and made[0][1:] == (1, 3 + 6) and runs == []


def test_a_family_outside_the_fused_layout_is_refused_in_one_line():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(BadInputError, match="model_type 'gpt2'"):
        build_graph(gpt2)
    odd = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**SMALL, head_dim=8))
    with pytest.raises(BadInputError, match="head size 8"):
        build_graph(odd)


def test_a_large_models_weights_stream_to_external_data(tmp_path, monkeypatch):
    """Past the size where a tied head's copy could pass protobuf's 2 GiB, the weights go to
    ``<file>.data`` as they are made (the graph never holds them); the export's parity check runs on
    the file as written, so it still equals PyTorch."""
    from modelpress.export import fused_decoder

    monkeypatch.setattr(fused_decoder, "EXTERNAL_DATA_BYTES", 0)  # every model counts as large
    torch.manual_seed(0)
    model = FAMILIES["qwen2"]().eval()
    path = tmp_path / "model.onnx"
    export_fused_decoder(model, None, path)
    graph = onnx.load(str(path), load_external_data=False)
    external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"model.onnx.data"}
    assert (
        sum(np.prod(t.dims) for t in external) * 4 > sum(p.numel() for p in model.parameters()) * 4
    )  # + the head's copy
    assert path.stat().st_size < 100_000


def test_static_int8_presses_the_fused_graph_end_to_end(tmp_path):
    """The default mode on a fused export: every weight MatMul (5 a layer and the head) becomes
    int8, GroupQueryAttention stays, validation times the in-place decode step, and the bundle
    generates (right-padded, in place)."""
    from conftest import write_recipe

    from modelpress.bundle import load
    from modelpress.cli import main
    from modelpress.testing import make_tiny_causal_lm, random_sentences

    folder = make_tiny_causal_lm(tmp_path / "llama", family="llama")  # head size 16
    (tmp_path / "corpus.txt").write_text("\n".join(random_sentences(100, seed=1)) + "\n", encoding="utf-8")
    (tmp_path / "heldout.txt").write_text("\n".join(random_sentences(60, seed=9)) + "\n", encoding="utf-8")
    body = {
        "calibration": {"data": str(tmp_path / "corpus.txt"), "num_samples": 8, "max_length": 32},
        "validate": {
            "latency_runs": 1,
            "warmup_runs": 1,
            "batch_sizes": [1],
            "seq_lengths": [16],
            "real_workload": False,
            "max_length": 32,
            "threads": 1,
            "eval_data": str(tmp_path / "heldout.txt"),
        },
        "gate": {"max_drop": 1000.0},
        "task_options": {"decoder_graph": "fused", "decode_contexts": [24]},
    }
    recipe = write_recipe(tmp_path / "lm.toml", {"name": "lm", "teacher": str(folder), "task": "text-generation"}, body)
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 0
    bundle = tmp_path / "out" / "lm"
    kinds = [n.op_type for n in onnx.load(str(bundle / "model.int8.onnx")).graph.node]
    assert kinds.count("MatMulIntegerToFloat") == 9 and "MatMul" not in kinds  # 4 per layer and the head
    assert kinds.count("GroupQueryAttention") == 2
    report = json.loads((bundle / "report.json").read_text())
    assert report["task_config"]["decoder_graph"] == "fused"
    with load(bundle) as lm:
        assert lm.generator.runner.kv_cache(lm.generator.layout, 1, 8) is not None
        # generate() runs the model back to back: ONNX Runtime's threads keep spinning between its runs
        options = lm.generator.runner._session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
        assert len(lm.generator.generate_ids([[5, 6, 7]], max_new_tokens=4, stop_token_ids=[])[0]) == 4


def _llama(**keys):
    return transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **keys
    )


def test_auto_takes_the_fused_graph_where_the_model_and_every_runtime_can_and_says_why_not():
    """``decoder_graph = "auto"`` (the default) asks each runtime's runner class what it runs
    (``Runner.decoder_graphs``), never its name: fused for a Llama of head size 16 on ONNX Runtime or
    onnxruntime-genai; traced, with the reason, for OpenVINO in the list, a head size of 8 or GPT-2;
    a runtime that runs only the fused graph on a model that cannot take it is one line."""
    from modelpress.runtimes.registry import RUNTIMES
    from modelpress.tasks.text_generation import choose_decoder_graph

    def runners(*names):
        return {n: RUNTIMES.get(n) for n in names}

    assert choose_decoder_graph("auto", _llama(), runners("onnxruntime"))[0] == "fused"
    assert choose_decoder_graph("auto", _llama(), runners("onnxruntime", "onnxruntime-genai"))[0] == "fused"
    graph, why = choose_decoder_graph("auto", _llama(), runners("onnxruntime", "openvino"))
    assert graph == "traced" and why == "openvino cannot run GroupQueryAttention"
    graph, why = choose_decoder_graph("auto", _llama(head_dim=8), runners("onnxruntime"))
    assert graph == "traced" and "head size 8" in why
    gpt2 = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2)
    assert choose_decoder_graph("auto", gpt2, runners("onnxruntime")) == (
        "traced",
        "not for model_type 'gpt2' (the fused decoder graph covers llama, qwen2, qwen3)",
    )
    with pytest.raises(
        BadInputError, match=r"fused graph \(needed by onnxruntime-genai\) is not for model_type 'gpt2'"
    ):
        choose_decoder_graph("auto", gpt2, runners("onnxruntime", "onnxruntime-genai"))
    with pytest.raises(BadInputError, match="fused graph is not for head size 8"):
        choose_decoder_graph("fused", _llama(head_dim=8), runners("onnxruntime"))
    assert choose_decoder_graph("traced", _llama(), runners("onnxruntime")) == ("traced", "asked for")


def test_the_auto_decision_is_one_info_line_and_the_task_config_records_it(caplog):
    import logging

    from modelpress.runtimes.registry import RUNTIMES
    from modelpress.tasks import configure_task, task_from_dict

    task = configure_task("text-generation")
    assert task.decoder_graph == "auto"
    with caplog.at_level(logging.INFO, logger="modelpress"):
        decided = task.for_model(_llama(), {"openvino": RUNTIMES.get("openvino")})
    lines = [r.getMessage() for r in caplog.records if "decoder graph" in r.getMessage()]
    assert lines == ["decoder graph: traced (auto: openvino cannot run GroupQueryAttention)"]
    config = decided.describe()
    assert (config["decoder_graph"], config["decoder_graph_why"]) == (
        "traced",
        "auto: openvino cannot run GroupQueryAttention",
    )
    assert task_from_dict(config).decoder_graph == "traced"  # bundle.json reads the decision back
    with pytest.raises(BadInputError, match="decoder_graph_why: unknown"):  # a decision, not an option
        configure_task("text-generation", {"decoder_graph_why": "x"})


@pytest.mark.parametrize(
    ("graph", "runtimes", "refused"),
    [("traced", ["onnxruntime-genai"], "onnxruntime-genai"), ("fused", ["onnxruntime", "openvino"], "openvino")],
)
def test_a_graph_a_runtime_cannot_run_is_refused_at_the_recipe(graph, runtimes, refused, tmp_path):
    from modelpress.recipe import load_recipe

    path = tmp_path / "r.toml"
    head = 'name = "lm"\nteacher = "org/some-model"\ntask = "text-generation"\n'
    path.write_text(
        f'{head}[task_options]\ndecoder_graph = "{graph}"\n[validate]\nruntimes = {runtimes!r}\n'.replace("'", '"')
    )
    with pytest.raises(BadInputError, match=f'{refused} cannot run task_options.decoder_graph = "{graph}"'):
        load_recipe(path)
    path.write_text(f"{head}[validate]\nruntimes = {runtimes!r}\n".replace("'", '"'))
    assert load_recipe(path).validate.runtimes == tuple(runtimes)  # "auto" decides with the model
