"""ONNX export of the tiny BERT and DistilBERT: input names and order, dynamic axes, parity on other
shapes than the export example, and a ParityError when the graph is wrong."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import load_tiny, task_for

from modelpress.errors import BadInputError, ParityError
from modelpress.export.parity import check_parity
from modelpress.modalities.text import EXAMPLE_SEQ, EXAMPLE_TEXTS, PARITY_SEQ, PARITY_TEXTS, TEXT

model_input_names = TEXT.model_inputs


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.fixture(scope="module", params=["bert", "distilbert"])
def exported(request):
    return request.getfixturevalue(f"{request.param}_onnx")


def _torch(exported):
    return load_tiny(exported.model.path)


def test_graph_inputs_are_exactly_the_canonical_names_in_order(exported):
    graph = onnx.load(str(exported.onnx_path)).graph
    assert tuple(i.name for i in graph.input) == exported.model.input_names == exported.result.input_names
    assert [o.name for o in graph.output] == ["last_hidden_state"]
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in graph.input)


def test_batch_and_sequence_axes_are_symbolic(exported):
    graph = onnx.load(str(exported.onnx_path)).graph
    in_dims = [_dims(i) for i in graph.input]
    assert all(len(d) == 2 and all(isinstance(x, str) and x for x in d) for d in in_dims), in_dims
    assert len({d[0] for d in in_dims}) == 1 and len({d[1] for d in in_dims}) == 1  # shared batch / seq
    out = _dims(graph.output[0])
    assert out[:2] == in_dims[0] and out[2] == 32


def test_export_parity_report_and_atomic_write(exported):
    r = exported.result
    assert r.parity.ok and r.parity.max_abs_diff < 1e-4 and r.opset == 18
    # parity is checked on a batch of another batch size *and* sequence length than the trace example
    assert r.parity.feed_shape == (len(PARITY_TEXTS), PARITY_SEQ) != (len(EXAMPLE_TEXTS), EXAMPLE_SEQ)
    assert [p.name for p in exported.onnx_path.parent.iterdir()] == ["model.onnx"]  # no .partial left


def test_onnx_equals_torch_on_a_third_shape_with_sentence_pairs(exported, data_files):
    """Batch 5 × 37 tokens, padded, with token type 1 on the second sentences: if two inputs were
    swapped in the graph (attention_mask ↔ token_type_ids), the outputs would differ."""
    import onnxruntime as ort
    import torch

    model, tokenizer = _torch(exported)
    texts = list(data_files.eval_texts[:5])
    enc = tokenizer(
        texts,
        list(data_files.eval_texts[5:10]),
        padding="max_length",
        truncation=True,
        max_length=37,
        return_tensors="pt",
    )
    assert enc["input_ids"].shape == (5, 37)
    assert 0 < int(enc["attention_mask"].sum()) < enc["attention_mask"].numel()  # real padding
    feed = {k: enc[k] for k in exported.result.input_names}
    if "token_type_ids" in feed:
        assert int(feed["token_type_ids"].sum()) > 0
    with torch.no_grad():
        reference = model(**feed).last_hidden_state.numpy()
    session = ort.InferenceSession(str(exported.onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in feed.items()})[0]
    assert got.shape == (5, 37, 32)
    assert np.abs(got - reference).max() < 1e-4
    # the same texts alone (no padding, another sequence length) give the same real-token outputs
    one = tokenizer(texts[0], data_files.eval_texts[5], return_tensors="np")
    alone = session.run(None, {k: one[k].astype(np.int64) for k in exported.result.input_names})[0]
    n = one["input_ids"].shape[1]
    assert np.abs(alone[0] - got[0, :n]).max() < 1e-4


def test_parity_error_when_a_weight_is_corrupted(bert_onnx, tmp_path):
    import torch

    model, tokenizer = _torch(bert_onnx)
    names = bert_onnx.result.input_names
    _, feed = TEXT.export_examples(tokenizer, names)
    with torch.no_grad():
        reference = {"last_hidden_state": model(**feed).last_hidden_state.numpy()}
    feed_np = {k: v.numpy() for k, v in feed.items()}
    ok = check_parity(str(bert_onnx.onnx_path), feed_np, reference, atol=1e-4, label="export")
    assert ok.ok and ok.per_output[0][0] == "last_hidden_state" and ok.feed_shape == (3, PARITY_SEQ)

    proto = onnx.load(str(bert_onnx.onnx_path))
    weights = {i.name for i in proto.graph.initializer}
    mm = next(n for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in weights)
    init = next(i for i in proto.graph.initializer if i.name == mm.input[1])
    w = numpy_helper.to_array(init)
    # random noise (a constant shift would vanish: LayerNorm outputs sum to ~0 over the channels)
    noise = np.random.default_rng(0).normal(scale=0.5, size=w.shape).astype(w.dtype)
    init.CopyFrom(numpy_helper.from_array(w + noise, init.name))
    bad = tmp_path / "corrupted.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(ParityError, match=r"last_hidden_state max \|diff\|") as exc:
        check_parity(str(bad), feed_np, reference, atol=1e-4, label="export")
    assert "3x23" in str(exc.value) and str(bad) in str(exc.value)


def test_model_input_names_needs_ids_and_mask():
    class Model:
        def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None): ...

    class Tok:
        model_input_names = ["input_ids", "token_type_ids", "attention_mask"]

    # canonical order, whatever order the tokenizer lists them in
    assert model_input_names(Model(), Tok()) == ("input_ids", "attention_mask", "token_type_ids")
    Tok.model_input_names = ["input_ids", "attention_mask"]
    assert model_input_names(Model(), Tok()) == ("input_ids", "attention_mask")
    Tok.model_input_names = ["input_ids"]
    with pytest.raises(BadInputError, match="needs input_ids and attention_mask"):
        model_input_names(Model(), Tok())


def test_text_classification_export_has_logits_with_a_dynamic_batch(tiny_bert_cls, tmp_path):
    import onnxruntime as ort
    import torch

    from modelpress.export.onnx_export import export_onnx

    task = task_for("text-classification")
    model, tokenizer = load_tiny(tiny_bert_cls.path, task)
    result = export_onnx(model, tokenizer, tmp_path / "cls.onnx", task=task)
    graph = onnx.load(str(result.path)).graph
    assert [o.name for o in graph.output] == ["logits"]
    out = _dims(graph.output[0])
    assert isinstance(out[0], str) and out[1] == 3
    enc = tokenizer(
        ["a dog", "the quick brown fox jumps over the lazy dog", "night"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        reference = model(**enc).logits.numpy()
    got = ort.InferenceSession(result.path, providers=["CPUExecutionProvider"]).run(
        None, {k: enc[k].numpy() for k in result.input_names}
    )[0]
    assert np.abs(got - reference).max() < 1e-4
    assert np.ptp(reference) > 1e-3  # the random classifier is not constant


def test_fusion_finds_every_attention_block_and_keeps_parity(bert_onnx, tmp_path):
    """The export's fusable form: ORT's fusion turns each layer's attention into one Attention
    node (it found none in the plain transformers 5 export)."""
    import torch

    from modelpress.export.fusion import fuse

    model, tokenizer = _torch(bert_onnx)
    feed = tokenizer(list(PARITY_TEXTS), padding="max_length", max_length=PARITY_SEQ, return_tensors="pt")
    feed = {k: feed[k] for k in bert_onnx.result.input_names}
    with torch.no_grad():
        reference = {"last_hidden_state": model(**feed).last_hidden_state.numpy()}
    # the export kept its own parity batch and reference for derived graphs: the same ones
    assert np.abs(bert_onnx.result.reference["last_hidden_state"] - reference["last_hidden_state"]).max() < 1e-5
    report, counts = fuse(
        bert_onnx.onnx_path,
        tmp_path / "model.fused.onnx",
        model_type="bert",
        num_heads=2,
        hidden_size=32,
        parity_feed=bert_onnx.result.parity_feed,
        reference=bert_onnx.result.reference,
        atol=1e-4,
    )
    assert report.ok and (tmp_path / "model.fused.onnx").is_file()
    layers = model.config.num_hidden_layers
    assert counts["Attention"] == layers and counts["SkipLayerNormalization"] == 2 * layers
    fused = onnx.load(str(tmp_path / "model.fused.onnx"))
    assert "Softmax" not in [n.op_type for n in fused.graph.node]
    # the contrib ops' domain is declared (ORT's own quantizer runs shape inference on the graph)
    assert "com.microsoft" in {o.domain for o in fused.opset_import}
    onnx.shape_inference.infer_shapes(fused, strict_mode=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fused.onnx"]


def test_the_exported_model_carries_no_build_machine_paths(exported):
    """The exporter's stack traces (absolute source paths of the machine that built it) are
    stripped; the module name scopes, which the per-node analysis reads, stay."""
    data = exported.onnx_path.read_bytes()
    assert b"pkg.torch.onnx.stack_trace" not in data and b"site-packages" not in data
    keys = {p.key for n in onnx.load(str(exported.onnx_path)).graph.node for p in n.metadata_props}
    assert "pkg.torch.onnx.name_scopes" in keys and "pkg.torch.onnx.stack_trace" not in keys
