"""Models past protobuf's 2 GiB limit (issue #24): with the threshold lowered through the test hook
(``fileio.EXTERNAL_DATA_BYTES``), a tiny decoder goes down the large-model path: the export writes
its weights to ``model.onnx.data``, calibration and both quantizers never hand ONNX Runtime the
whole model as one serialized message, the quantized files get external data too, and every
output equals the one of the in-memory path bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from modelpress import fileio
from modelpress.testing import make_tiny_causal_lm, random_sentences

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
    from modelpress.runtimes.quantize.stage import quantize_model
    from modelpress.tasks import configure_task

    task = configure_task("text-generation")
    model, tokenizer = load_model_and_preprocessor(str(folder), task)
    out.mkdir()
    result = task.export(model, tokenizer, out / "model.onnx", opset=18, atol=1e-4)
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
    from modelpress.runtimes.quantize.config import QuantizeConfig

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
