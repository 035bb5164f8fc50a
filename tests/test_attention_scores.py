"""int8 attention scores (issue 23 item 5): symmetric int8 Q/DQ on the Q and K projection outputs of
each Q·Kᵀ MatMul, calibrated in the plan's own pass (padding rows excluded), written into the Q/DQ
graphs (the OpenVINO IR) where ``quantize.attention_scores`` is on — by ``"auto"`` for VNNI/AMX
targets — and never into the ``ort`` format."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from conftest import LAYERS, cli, make_texts, write_recipe
from onnx import numpy_helper

from modelpress.calibration_data.feeds import TokenizedFeed
from modelpress.errors import BadInputError
from modelpress.export.names import module_names
from modelpress.quantize.config import QuantizeConfig
from modelpress.quantize.static import plan_quantization, write_quantized
from modelpress.quantize.targets import find_attention_scores
from modelpress.runtimes.target import resolve_target

#: the query and key Linear modules of each family, as the exporter's metadata names them
QK_MODULES = {
    "bert": (".attention.self.query", ".attention.self.key"),
    "distilbert": (".attention.q_lin", ".attention.k_lin"),
    "vit": (".attention.q_proj", ".attention.k_proj"),
}


def _projection_outputs(model: onnx.ModelProto, suffix: str) -> set[str]:
    """The reference, independent of the finder: the bias Add output of every layer's ``suffix`` Linear."""
    modules = module_names(model)
    return {
        n.output[0] for n in model.graph.node if n.op_type == "Add" and (modules.get(n.name) or "").endswith(suffix)
    }


def _tokenizer(exported):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(exported.model.path))


def _feed(exported, texts, *, batch_size=8, max_length=32):
    return TokenizedFeed(
        texts,
        _tokenizer(exported),
        batch_size=batch_size,
        max_length=max_length,
        input_names=exported.result.input_names,
    )


@pytest.fixture(scope="module")
def bert_plan(bert_onnx):
    """One calibration with int8 attention scores, in the Q/DQ format."""
    feed = _feed(bert_onnx, make_texts(48, seed=31))
    return feed, plan_quantization(bert_onnx.onnx_path, feed, QuantizeConfig(format="qdq", attention_scores=True))


def _without_scores(plan):
    return replace(plan, cfg=plan.cfg.with_(attention_scores=False), scores=[], score_ranges={})


@pytest.fixture(scope="module")
def vit_onnx(tmp_path_factory) -> onnx.ModelProto:
    """A tiny ViT: its export spells attention as SDPA's decomposition (√scale on Q and on Kᵀ, head
    reshapes computed from Shape nodes), not as eager attention's QKᵀ/√d."""
    from modelpress.export.onnx_export import export_onnx
    from modelpress.models import load_model_and_preprocessor
    from modelpress.tasks import configure_task
    from modelpress.testing import make_tiny_vision_model

    folder = make_tiny_vision_model(tmp_path_factory.mktemp("vit"), family="vit", num_hidden_layers=LAYERS)
    task = configure_task("image-classification")
    model, processor = load_model_and_preprocessor(str(folder), task)
    export_onnx(model, processor, folder / "model.onnx", task=task)
    return onnx.load(str(folder / "model.onnx"))


@pytest.mark.parametrize("fixture", ["bert_onnx", "distilbert_onnx", "vit_onnx"])
def test_the_finder_names_each_layers_query_and_key_projection_outputs(fixture, request):
    exported = request.getfixturevalue(fixture)
    if isinstance(exported, onnx.ModelProto):
        model, family = exported, "vit"
    else:
        model, family = onnx.load(str(exported.onnx_path)), exported.model.family
    q_mod, k_mod = QK_MODULES[family]
    scores = find_attention_scores(model)
    assert len(scores) == LAYERS
    queries, keys = _projection_outputs(model, q_mod), _projection_outputs(model, k_mod)
    assert len(queries) == len(keys) == LAYERS
    assert {s.query for s in scores} == queries and {s.key for s in scores} == keys
    nodes = {n.name: n for n in model.graph.node}
    for s in scores:  # each is the MatMul whose product goes to a Softmax; attention·V (reading one) is not
        assert nodes[s.node_name].op_type == "MatMul"
    # attention·V reads the probabilities: a Softmax's output (SDPA: with its NaN guard, a Where)
    probs = {n.output[0] for n in model.graph.node if n.op_type in ("Softmax", "Where")}
    av = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[0] in probs]
    assert len(av) == LAYERS and not {n.name for n in av} & {s.node_name for s in scores}


def test_qdq_sits_on_the_query_and_key_projection_outputs_and_nowhere_else(bert_plan, bert_onnx, tmp_path):
    _, plan = bert_plan
    with_scores, without = tmp_path / "att.onnx", tmp_path / "base.onnx"
    summary = write_quantized(plan, with_scores)
    write_quantized(_without_scores(plan), without)
    fp32 = onnx.load(str(bert_onnx.onnx_path))
    expected = _projection_outputs(fp32, QK_MODULES["bert"][0]) | _projection_outputs(fp32, QK_MODULES["bert"][1])
    assert len(expected) == 2 * LAYERS

    att, base = onnx.load(str(with_scores)), onnx.load(str(without))
    base_names = {n.name for n in base.graph.node}
    new = [n for n in att.graph.node if n.name not in base_names]
    qs = [n for n in new if n.op_type == "QuantizeLinear"]
    dqs = {n.input[0]: n for n in new if n.op_type == "DequantizeLinear"}
    assert len(new) == 2 * len(expected) and {q.input[0] for q in qs} == expected
    inits = {i.name: numpy_helper.to_array(i) for i in att.graph.initializer}
    readers = {}
    for n in att.graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    rewired = {}
    for q in qs:
        zp = inits[q.input[2]]
        assert zp.dtype == np.int8 and zp.item() == 0  # symmetric int8, zero point 0
        dq = dqs[q.output[0]]
        assert list(dq.input[1:]) == list(q.input[1:])
        assert [r.name for r in readers[q.input[0]]] == [q.name]  # the fp32 output feeds only the Q
        (reader,) = readers[dq.output[0]]
        assert reader.op_type == "Reshape"  # …and the heads reshape reads the DQ
        rewired[reader.name] = (dq.output[0], q.input[0])
    # every other node is as the plan without attention scores wrote it
    att_nodes = {n.name: n for n in att.graph.node if n.name in base_names}
    for n in base.graph.node:
        got = list(att_nodes[n.name].input)
        if n.name in rewired:
            dq_out, orig = rewired[n.name]
            got = [orig if i == dq_out else i for i in got]
        assert (att_nodes[n.name].op_type, got, list(att_nodes[n.name].output)) == (
            n.op_type,
            list(n.input),
            list(n.output),
        ), n.name
    scores = summary.attention_scores
    assert scores.in_this_graph and {t.tensor for t in scores.tensors} == expected
    assert not set(scores.matmuls) & set(summary.fp32_nodes) and len(summary.fp32_nodes) == LAYERS  # attention·V


def test_ranges_are_the_abs_max_over_real_tokens(bert_onnx):
    """Calibrated in the plan's pass like the projection inputs: padding rows left out. The padded
    positions carry random words here (a [PAD] row is rarely the largest), so that counting them
    would change some range."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    feed = []
    for batch in _feed(bert_onnx, make_texts(48, seed=31)):
        ids = batch["input_ids"].copy()
        pad = batch["attention_mask"] == 0
        ids[pad] = rng.integers(10, int(ids.max()) + 1, int(pad.sum()))
        feed.append({**batch, "input_ids": ids})
    plan = plan_quantization(bert_onnx.onnx_path, feed, QuantizeConfig(format="qdq", attention_scores=True))
    names = sorted(plan.score_ranges)
    assert len(names) == 2 * LAYERS
    model = onnx.load(str(bert_onnx.onnx_path))
    for name in names:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    real, every = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    padded_rows = 0
    for batch in feed:
        mask = batch["attention_mask"].astype(bool)
        padded_rows += int((~mask).sum())
        values = session.run(names, {i.name: batch[i.name] for i in session.get_inputs()})
        for name, v in zip(names, values):
            real[name] = max(real[name], float(np.abs(v[mask]).max()))
            every[name] = max(every[name], float(np.abs(v).max()))
    assert padded_rows > 0 and any(real[n] != every[n] for n in names)  # padding would change some range
    for name in names:
        rng = plan.score_ranges[name]
        assert (rng.lo, rng.hi) == pytest.approx((-real[name], real[name]), rel=1e-6)


def _pooled(runner_cls, path, batch):
    with runner_cls(path, threads=1) as runner:
        hidden = next(iter(runner.run(batch).values()))
    mask = batch["attention_mask"][..., None].astype(np.float32)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def test_onnx_runtime_output_stays_close_to_fp32(bert_plan, bert_onnx, tmp_path):
    from modelpress.runtimes.onnxruntime_runner import OnnxRuntimeRunner

    _, plan = bert_plan
    write_quantized(plan, tmp_path / "att.onnx")
    write_quantized(_without_scores(plan), tmp_path / "base.onnx")
    batch = next(iter(_feed(bert_onnx, make_texts(24, seed=77), batch_size=24)))
    fp32 = _pooled(OnnxRuntimeRunner, bert_onnx.onnx_path, batch)
    cos_att = (_pooled(OnnxRuntimeRunner, tmp_path / "att.onnx", batch) * fp32).sum(1)
    cos_base = (_pooled(OnnxRuntimeRunner, tmp_path / "base.onnx", batch) * fp32).sum(1)
    assert cos_att.min() > 0.99 and cos_att.mean() > cos_base.mean() - 2e-3
    assert not np.allclose(cos_att, cos_base, atol=1e-7)  # the Q/DQ really changed the scores


def test_the_openvino_ir_of_an_ort_plan_carries_them_and_the_ort_graph_does_not(bert_onnx, tmp_path):
    """What a run on an AVX512-VNNI target ships: ``auto`` → on; model.int8.onnx (format ``ort``)
    keeps ONNX Runtime's attention fp32, the IR runs Q·Kᵀ on int8 Q and K."""
    pytest.importorskip("openvino")
    import openvino as ov

    from modelpress.runtimes.onnxruntime_runner import OnnxRuntimeRunner
    from modelpress.runtimes.openvino_runner import OpenVINORunner, write_openvino_ir
    from modelpress.quantize.stage import QuantizeOutcome, quantize_model

    cfg = QuantizeConfig().for_target(resolve_target("avx512-vnni"))
    assert cfg.attention_scores is True and cfg.graph_format == "ort"
    cal = _feed(bert_onnx, make_texts(48, seed=5))
    outcome = quantize_model(bert_onnx.onnx_path, tmp_path / "model.int8.onnx", cal, cfg)
    scores = outcome.summary.attention_scores
    assert not scores.in_this_graph and len(scores.tensors) == 2 * LAYERS
    int8_graph = onnx.load(str(tmp_path / "model.int8.onnx"))
    score_tensors = {t.tensor for t in scores.tensors}
    assert not [n for n in int8_graph.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in score_tensors]
    assert set(scores.matmuls) <= set(outcome.summary.fp32_nodes)

    xml = write_openvino_ir(outcome, tmp_path / "model.int8.onnx", tmp_path / "openvino" / "model.xml")
    plain = QuantizeOutcome(outcome.summary, [], None, _without_scores(outcome.plan))
    xml_plain = write_openvino_ir(plain, tmp_path / "model.int8.onnx", tmp_path / "plain" / "model.xml")

    def fake_quantize(path):
        return sum(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(str(path)).get_ops())

    assert fake_quantize(xml) == fake_quantize(xml_plain) + 2 * LAYERS
    batch = next(iter(_feed(bert_onnx, make_texts(24, seed=78), batch_size=24)))
    fp32 = _pooled(OnnxRuntimeRunner, bert_onnx.onnx_path, batch)
    cos = (_pooled(OpenVINORunner, xml, batch) * fp32).sum(1)
    cos_plain = (_pooled(OpenVINORunner, xml_plain, batch) * fp32).sum(1)
    assert 0.99 < cos.min() and cos.mean() < 0.99999 and cos.mean() > cos_plain.mean() - 2e-3


@pytest.mark.parametrize(
    "target, preset, written, pinned",
    [
        ("avx512-vnni", "onnxruntime", "auto", True),
        ("amx", "onnxruntime", "auto", True),
        ("x86-64-v3+avx-vnni", "onnxruntime", "auto", True),
        ("x86-64-v3", "onnxruntime", "auto", False),  # no VNNI: OpenVINO's int8 kernels do not pay (issue 23)
        ("x86-64-v4", "onnxruntime", "auto", False),
        ("arm64", "onnxruntime", "auto", False),
        ("avx512-vnni", "tensorrt", "auto", False),  # TensorRT's Q/DQ twin: not a CPU graph
        ("avx512-vnni", "onnxruntime", False, False),  # what the recipe wrote wins
        ("x86-64-v3", "onnxruntime", True, True),
    ],
)
def test_auto_follows_the_target(target, preset, written, pinned):
    cfg = QuantizeConfig(preset=preset, attention_scores=written).for_target(resolve_target(target))
    assert cfg.attention_scores is pinned and cfg.int8_attention_scores is pinned


def test_unpinned_auto_and_tensorrt_twin_keep_scores_fp32(bert_plan):
    from modelpress.quantize.static import for_tensorrt

    assert not QuantizeConfig().int8_attention_scores  # never pinned to a target: off
    _, plan = bert_plan
    twin = for_tensorrt(plan)
    assert twin.scores == [] and not twin.cfg.int8_attention_scores


@pytest.mark.parametrize("value", ["yes", "on", 1, "true"])
def test_a_bad_value_is_one_line(value):
    from modelpress.recipe import section_config

    with pytest.raises(BadInputError) as err:
        section_config(QuantizeConfig, "quantize", {"attention_scores": value})
    message = str(err.value)
    assert "quantize.attention_scores" in message and "\n" not in message


def test_a_bad_value_exits_2_on_the_command_line(bert_onnx, tiny_bert, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", {"name": "att", "teacher": str(tiny_bert.path)}, {})
    proc = cli(
        "quantize",
        str(bert_onnx.onnx_path),
        "--out",
        str(tmp_path / "q.onnx"),
        "--recipe",
        str(recipe),
        "--set",
        'quantize.attention_scores="sometimes"',
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("modelpress: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "quantize.attention_scores" in errors[0], proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "q.onnx").exists()
