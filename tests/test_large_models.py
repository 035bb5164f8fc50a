"""Models past protobuf's 2 GiB limit (issue #24): with the threshold lowered through the test hook
(``fileio.EXTERNAL_DATA_BYTES``), a tiny decoder goes down the large-model path: the export writes
its weights to ``model.onnx.data``, calibration and both quantizers never hand ONNX Runtime the
whole model as one serialized message, the quantized files get external data too, and every
output equals the one of the in-memory path bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from modelpress import fileio
from modelpress.testing import make_tiny_causal_lm, random_sentences
from modelpress.export.exporters import export_model

LOW = 4096  # bytes: every tiny model is "large" under it


def _feeds(tokenizer, layout):
    stream = tokenizer(" ".join(random_sentences(80, seed=1)))["input_ids"]
    return [
        {
            "input_ids": np.array([stream[s : s + 16]]),
            "attention_mask": np.ones((1, 16), np.int64),
            "position_ids": np.arange(16)[None],
            **layout.empty(1),
        }
        for s in range(0, 96, 16)
    ]


def _press(folder, out, cfgs):
    """Export, then each quantize config: the written paths."""
    from modelpress.export.causal_lm import KVLayout
    from modelpress.models import load_model_and_preprocessor
    from modelpress.quantize.stage import quantize_model
    from modelpress.tasks import configure_task

    task = configure_task("text-generation", {"decoder_graph": "traced"})  # the traced graph's feeds
    model, tokenizer = load_model_and_preprocessor(str(folder), task)
    out.mkdir()
    result = export_model(task, model, tokenizer, out / "model.onnx", opset=18, atol=1e-4)
    feeds = _feeds(tokenizer, KVLayout.from_config(model.config))
    paths = {"fp32": out / "model.onnx"}
    for name, cfg in cfgs.items():
        quantize_model(out / "model.onnx", out / f"model.{name}.onnx", feeds, cfg)
        paths[name] = out / f"model.{name}.onnx"
    return paths, feeds[0], result


def _outputs(path, feed):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


@pytest.fixture
def session_spy(monkeypatch):
    """Records the size of every model ONNX Runtime gets as bytes (None: from a file)."""
    seen: list[int | None] = []
    real = ort.InferenceSession

    def spy(model, *args, **kwargs):
        seen.append(len(model) if isinstance(model, bytes) else None)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    return seen


def test_a_decoder_past_the_threshold_is_exported_and_quantized_through_external_data(
    tmp_path, monkeypatch, session_spy
):
    from modelpress.quantize.config import QuantizeConfig

    folder = make_tiny_causal_lm(tmp_path / "llama", family="llama")
    cfgs = {
        "int8": QuantizeConfig(),
        "int4": QuantizeConfig(mode="weight-only", weight_bits=4, block_size=16, accuracy_level=4),
    }
    small, feed, _ = _press(folder, tmp_path / "small", cfgs)
    assert not any(p.with_name(p.name + ".data").exists() for p in small.values())
    session_spy.clear()

    monkeypatch.setattr(fileio, "EXTERNAL_DATA_BYTES", LOW)
    large, feed, result = _press(folder, tmp_path / "large", cfgs)
    # calibration's sessions took the model from a file: nothing past the threshold went in as bytes
    assert session_spy and all(n is None or n <= LOW for n in session_spy)
    assert None in session_spy
    for name, path in large.items():
        data = path.with_name(path.name + ".data")
        assert data.is_file() and data.stat().st_size > 0, name
        assert fileio.onnx_files(path) == [path, data]
        graph = onnx.load(str(path), load_external_data=False)
        assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer), name
        for got, want in zip(_outputs(path, feed), _outputs(small[name], feed)):
            np.testing.assert_array_equal(got, want, err_msg=name)
    assert result.parity.max_abs_diff < 1e-4


def test_a_pressed_model_past_the_mapped_size_keeps_its_weights_beside_it(tmp_path, monkeypatch):
    """A pressed model with more weight bytes than ``MAPPED_WEIGHTS_BYTES`` (an LLM's) is saved as the
    builder saves it, graph + ``<name>.data`` (ONNX Runtime maps the weights instead of parsing them);
    the fp32 export keeps its own rule; the outputs equal the one-file model's bit for bit."""
    from modelpress.quantize.config import QuantizeConfig

    folder = make_tiny_causal_lm(tmp_path / "llama", family="llama")
    cfgs = {
        "int8": QuantizeConfig(),
        "int4": QuantizeConfig(mode="weight-only", weight_bits=4, block_size=16, accuracy_level=4),
    }
    one_file, feed, _ = _press(folder, tmp_path / "one", cfgs)
    monkeypatch.setattr(fileio, "MAPPED_WEIGHTS_BYTES", LOW)
    mapped, feed, _ = _press(folder, tmp_path / "mapped", cfgs)
    assert not mapped["fp32"].with_name("model.onnx.data").exists()
    for name in cfgs:
        assert fileio.onnx_files(one_file[name]) == [one_file[name]], name
        assert fileio.onnx_files(mapped[name]) == [mapped[name], mapped[name].with_name(f"model.{name}.onnx.data")]
        for got, want in zip(_outputs(mapped[name], feed), _outputs(one_file[name], feed)):
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_copy_and_session_of_a_large_model_leave_the_model_whole(monkeypatch):
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(2048, dtype=np.float32).reshape(32, 64) / 100
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    before = model.SerializeToString()
    monkeypatch.setattr(fileio, "EXTERNAL_DATA_BYTES", 1024)
    assert fileio.needs_external_data(model)
    copy = fileio.copy_model(model)
    assert copy.SerializeToString() == before and model.SerializeToString() == before
    copy.graph.initializer[0].raw_data = np.zeros_like(w).tobytes()  # the copy owns its bytes
    assert model.SerializeToString() == before
    session = fileio.session_from_model(model, ort.SessionOptions())
    assert model.SerializeToString() == before  # the weights read back after the temporary file
    x = np.ones((1, 32), np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ w, rtol=1e-6)


def test_each_stage_reports_its_own_time_and_peak_memory():
    from modelpress.memory import StageMeter, reset_peak_rss

    if not reset_peak_rss():
        pytest.skip("no /proc/self/clear_refs: the peak cannot be reset here")
    meter = StageMeter()
    with meter.stage("big"):
        block = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
        del block
    with meter.stage("small"):
        pass
    big, small = meter.stages["big"], meter.stages["small"]
    assert big["peak_rss_mb"] - small["peak_rss_mb"] > 250  # the small stage's peak starts again
    assert big["seconds"] >= 0 and small["seconds"] >= 0


@pytest.fixture(scope="module")
def tied_qwen2(tmp_path_factory):
    """A tiny Qwen2 with tied embeddings (the 0.5 B's layout), exported."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from modelpress.models import load_model_and_preprocessor
    from modelpress.tasks import configure_task

    work = tmp_path_factory.mktemp("tied")
    task = configure_task("text-generation")
    _, tokenizer = load_model_and_preprocessor(str(make_tiny_causal_lm(work / "words", family="llama")), task)
    torch.manual_seed(0)
    config = Qwen2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        max_position_embeddings=128,
    )
    model = Qwen2ForCausalLM(config).eval()
    export_model(task, model, tokenizer, work / "model.onnx", opset=18, atol=1e-4)
    return work, model, tokenizer


@pytest.mark.parametrize("bits", [4, 8])
def test_a_tied_embedding_reads_the_quantized_head_weight_and_the_file_holds_the_matrix_once(tied_qwen2, bits):
    from test_weight_only import _dequantized

    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.weight_only import quantize_weights_only

    work, model, tokenizer = tied_qwen2
    block = 16
    cfg = QuantizeConfig(
        mode="weight-only", weight_bits=bits, block_size=block, head_bits=4, accuracy_level=4, int4_method="rtn"
    )
    summary = quantize_weights_only(work / "model.onnx", work / f"int{bits}.onnx", cfg)
    assert len(summary.shared_embeddings) == 1
    q = onnx.load(str(work / f"int{bits}.onnx"))
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("GatherBlockQuantized") == 1 and "Gather" not in [
        n.op_type for n in q.graph.node if n.input and n.input[0] in {i.name for i in q.graph.initializer}
    ]
    table = model.get_input_embeddings().weight.detach().numpy()  # [vocab, hidden]
    # no fp32 copy of the matrix left (the export held two: the table and the head's transpose)
    shapes = {tuple(i.dims) for i in q.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert not shapes & {table.shape, table.shape[::-1]}
    # the lookup gives the head's blockwise-quantized rows, computed here independently
    looked = next(n.output[0] for n in q.graph.node if n.op_type == "GatherBlockQuantized")
    q.graph.output.append(onnx.helper.make_empty_tensor_value_info(looked))
    from modelpress.export.causal_lm import KVLayout

    ids = np.array([[0, 3, len(tokenizer) - 1, 5]])
    feed = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "position_ids": np.arange(4)[None],
        **KVLayout.from_config(model.config).empty(1),
    }
    session = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run([looked], feed)[0]
    expected = _dequantized(table.T.copy(), bits, block).T[ids]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def _status_mb(key: str) -> float:
    line = next(x for x in open("/proc/self/status") if x.startswith(key + ":"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="Linux /proc")
def test_released_weight_pages_leave_the_process_and_read_back_the_same(tmp_path):
    """What the export read of a mapped safetensors file stays resident until handed back: after
    ``release_weight_pages`` the process's file-backed RSS falls by (nearly) the file, and the mapping
    still reads the same bytes (they come back from the file)."""
    from modelpress.memory import release_weight_pages

    path = tmp_path / "w.safetensors"
    size = 64 << 20
    want = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
    want.tofile(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    checksum = int(mapped[::4096].sum())  # touches every page
    before = _status_mb("RssFile")
    assert release_weight_pages() >= size
    after = _status_mb("RssFile")
    assert before - after > 0.9 * size / 2**20, (before, after)
    assert int(mapped[::4096].sum()) == checksum and np.array_equal(mapped[-100:], want[-100:])


def _watch_sessions_and_torch(monkeypatch, module, torch_fn: str) -> tuple[list[bool], list[int]]:
    """Spies for the parity order: per call of ``module.torch_fn`` (PyTorch's step), whether an ONNX
    Runtime session was alive; per ``release_weight_pages`` call, how many sessions had been made."""
    import weakref

    live: list = []
    real_session = ort.InferenceSession

    def spy(*args, **kwargs):
        session = real_session(*args, **kwargs)
        live.append(weakref.ref(session))
        return session

    monkeypatch.setattr(ort, "InferenceSession", spy)
    open_at_torch: list[bool] = []
    real_torch = getattr(module, torch_fn)

    def torch_step(*args, **kwargs):
        open_at_torch.append(any(r() is not None for r in live))
        return real_torch(*args, **kwargs)

    monkeypatch.setattr(module, torch_fn, torch_step)
    released: list[int] = []
    monkeypatch.setattr(module, "release_weight_pages", lambda: released.append(len(live)) or 0)
    return open_at_torch, released


def test_export_parity_never_holds_the_graph_and_the_pytorch_weights_at_once(tmp_path, monkeypatch, caplog):
    """The decoder export's parity ran PyTorch and the fp32 graph's session side by side (2× the
    weights resident: the 0.5 B export's 4.96 GB peak); now the graph runs every step first, its
    session is gone before PyTorch runs, and the model's mapped weights are handed back before the
    session is made. Each step says where the export is (stderr bar, log lines)."""
    import logging

    import modelpress.export.causal_lm as cl
    from modelpress.models import load_model_and_preprocessor
    from modelpress.tasks import configure_task

    open_at_torch_step, released = _watch_sessions_and_torch(monkeypatch, cl, "_torch_step")
    folder = make_tiny_causal_lm(tmp_path / "llama", family="llama")
    task = configure_task("text-generation", {"decoder_graph": "traced"})  # the traced exporter's parity order
    model, tokenizer = load_model_and_preprocessor(str(folder), task)
    with caplog.at_level(logging.INFO, logger="modelpress.export"):
        result = export_model(task, model, tokenizer, tmp_path / "model.onnx", opset=18, atol=1e-4)
    assert result.parity.ok
    assert len(open_at_torch_step) == cl.PARITY["steps"] + 1 and not any(open_at_torch_step)
    assert released == [0]  # before the graph's session was made
    steps = [r.getMessage().split(" (")[0] for r in caplog.records if r.getMessage().startswith("export: ")]
    assert steps == ["export: traced", "export: written", "export: ONNX Runtime session made"]


def test_the_fused_export_runs_its_graph_and_pytorch_one_after_the_other(tmp_path, monkeypatch):
    """The fused decoder's parity ran PyTorch beside the graph's session (the 0.5 B export peaked at
    2.53x its fp32 weights, past the 2.5x bound); now the graph's steps run first on its own greedy
    tokens, the session is gone before PyTorch's references, and the model's mapped weights are handed
    back before the session is made. The parity itself still compares every step."""
    import modelpress.export.fused_decoder as fd
    from modelpress.models import load_model_and_preprocessor
    from modelpress.tasks import configure_task

    open_at_reference, released = _watch_sessions_and_torch(monkeypatch, fd, "_reference_logits")
    folder = make_tiny_causal_lm(tmp_path / "llama", family="llama")
    task = configure_task("text-generation", {"decoder_graph": "fused"})
    model, tokenizer = load_model_and_preprocessor(str(folder), task)
    result = export_model(task, model, tokenizer, tmp_path / "model.onnx", opset=18, atol=1e-4)
    assert result.parity.ok and 0 < result.parity.max_abs_diff < 1e-4
    assert len(open_at_reference) == fd.PARITY["steps"] + 1 and not any(open_at_reference)
    assert released == [0]  # before the graph's session was made
