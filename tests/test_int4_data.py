"""Data-aware weight-only int4 (``quantize.int4_method`` = "awq" | "gptq", ``quantize.int8_budget``): the
packed layout against ONNX Runtime's own quantizer, the output error against round-to-nearest on a
layer with a planted outlier channel (errors computed here in numpy), the written graph against a
reference built from its dequantized weights, the int8 budget, and the keys' one-line refusals."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelpress.export.exporters import export_model
from modelpress.quantize.config import QuantizeConfig
from modelpress.testing import make_tiny_causal_lm


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("k", [64, 70])  # 70: a padded last block
def test_round_to_nearest_packs_the_bytes_onnx_runtime_writes(bits, k):
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    from modelpress.quantize.blockwise import pack, quantize_rtn

    rng = np.random.default_rng(k)
    w = rng.standard_normal((k, 24)).astype(np.float32)
    w[:16, 5] = 0.0  # an all-zero block
    blocks = -(-k // 16)
    packed = np.zeros((24, blocks, 16 * bits // 8), np.uint8)
    scales = np.zeros((24, blocks), np.float32)
    zero_points = np.zeros((24, blocks), np.uint8)
    (quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits)(packed, w, scales, zero_points, 16, 24, k, True)
    mine, my_scales = pack(quantize_rtn(w, bits, 16))
    np.testing.assert_array_equal(mine, packed)
    np.testing.assert_array_equal(my_scales, scales)


def _gelu(x: np.ndarray) -> np.ndarray:
    from math import erf

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)))


def _outlier_layer(tmp_path, norm: str):
    """x → ``norm`` (LayerNormalization, or the RMSNorm of ORT's fused graphs) → MatMul w1 → Gelu →
    MatMul w2, with correlated inputs (as real activations are), one norm output channel 25× the
    others and one hidden channel 10× (a w1 column); the calibration rows and an independent numpy
    forward of the fp32 graph."""
    rng = np.random.default_rng(0)
    d, h, rows = 64, 128, 512
    x = (rng.standard_normal((rows, 16)) @ rng.standard_normal((16, d)) + 0.3 * rng.standard_normal((rows, d))).astype(
        np.float32
    )
    gamma, beta = np.ones(d, np.float32), (0.1 * rng.standard_normal(d)).astype(np.float32)
    gamma[11] = 25.0
    w1 = (rng.standard_normal((d, h)) * 0.1).astype(np.float32)
    w1[:, 7] *= 10.0
    w2 = (rng.standard_normal((h, d)) * 0.1).astype(np.float32)
    rms = norm == "SimplifiedLayerNormalization"
    nodes = [
        helper.make_node(norm, ["x", "gamma"] if rms else ["x", "gamma", "beta"], ["n"], name="ln", epsilon=1e-5),
        helper.make_node("MatMul", ["n", "w1"], ["a"], name="fc1"),
        helper.make_node("Gelu", ["a"], ["g"], name="gelu", domain="com.microsoft"),
        helper.make_node("MatMul", ["g", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "outlier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", d])],
        [numpy_helper.from_array(v, k) for k, v in {"gamma": gamma, "beta": beta, "w1": w1, "w2": w2}.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    )
    path = tmp_path / "outlier.onnx"
    onnx.save(model, str(path))
    if rms:
        n = x / np.sqrt((x**2).mean(1, keepdims=True) + 1e-5) * gamma
    else:
        mu, var = x.mean(1, keepdims=True), x.var(1, keepdims=True)
        n = (x - mu) / np.sqrt(var + 1e-5) * gamma + beta
    y = _gelu(n @ w1) @ w2
    return path, x, y


@pytest.mark.parametrize("norm", ["LayerNormalization", "SimplifiedLayerNormalization"])
def test_awq_and_gptq_cut_the_output_error_of_a_planted_outlier_channel(tmp_path, norm):
    from modelpress.quantize.weight_only import quantize_weights_only

    path, x, y = _outlier_layer(tmp_path, norm)
    feeds = [{"x": x[i : i + 128]} for i in range(0, len(x), 128)]
    errors, summaries = {}, {}
    for method in ("rtn", "awq", "gptq"):
        cfg = QuantizeConfig(
            mode="weight-only", weight_bits=4, block_size=16, head_bits=4, accuracy_level=0, int4_method=method
        )
        out = tmp_path / f"{method}.onnx"
        summaries[method] = quantize_weights_only(path, out, cfg, feeds)
        got = _session(onnx.load(str(out))).run(None, {"x": x})[0]
        errors[method] = float(((got - y) ** 2).sum() / (y**2).sum())
    assert errors["awq"] < 0.6 * errors["rtn"], errors
    assert errors["gptq"] < 0.6 * errors["rtn"], errors
    awq = {layer.node: layer for layer in summaries["awq"].layers}
    assert awq["fc1"].alpha > 0 and awq["fc1"].error < awq["fc1"].error_rtn  # the outlier channel was scaled
    ops = [(n.op_type, n.name) for n in onnx.load(str(tmp_path / "awq.onnx")).graph.node]
    # fc1's 1/s went into the LayerNorm's weights; fc2's input comes from the Gelu: an explicit Mul (when scaled)
    assert ops[:2] == [(norm, "ln"), ("MatMulNBits", "fc1_Q4")], ops
    assert ("Mul" in dict(ops)) == (awq["fc2"].alpha > 0)
    assert summaries["rtn"].layers == () and summaries["gptq"].int4_method == "gptq"


def _unpacked(b: np.ndarray, scales: np.ndarray, bits: int, k: int) -> np.ndarray:
    """MatMulNBits' B [N, blocks, blob] and scales → the [K, N] weight it stands for, read here
    byte by byte: 4 bits, low nibble first; code − 2^(bits−1) times the block's scale."""
    n, blocks, _ = b.shape
    if bits == 4:
        codes = np.stack([b & 0x0F, b >> 4], axis=-1).reshape(n, blocks, -1)
    else:
        codes = b
    values = (codes.astype(np.float32) - (1 << (bits - 1))) * scales.reshape(n, blocks, 1)
    return values.reshape(n, -1)[:, :k].T


def _dequantized_reference(quantized: onnx.ModelProto) -> onnx.ModelProto:
    """``quantized`` with each MatMulNBits a MatMul on its dequantized weight, each
    GatherBlockQuantized a Gather of the table it stands for."""
    model = onnx.ModelProto()
    model.CopyFrom(quantized)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    produced = {o: n for n in model.graph.node for o in n.output}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: a.i for a in node.attribute}
        if node.op_type == "MatMulNBits":
            w = _unpacked(inits[node.input[1]], inits[node.input[2]], attrs["bits"], attrs["K"])
            model.graph.initializer.append(numpy_helper.from_array(w, f"{node.name}_w"))
            nodes.append(helper.make_node("MatMul", [node.input[0], f"{node.name}_w"], list(node.output)))
        elif node.op_type == "GatherBlockQuantized":
            head = produced[node.input[0]]  # Reshape of the head's B
            scales = produced[node.input[2]]
            b, s = inits[head.input[0]], inits[scales.input[0]]
            k = b.shape[1] * b.shape[2] * 8 // attrs["bits"]
            table = _unpacked(b, s, attrs["bits"], k).T
            model.graph.initializer.append(numpy_helper.from_array(table, f"{node.name}_table"))
            nodes.append(helper.make_node("Gather", [f"{node.name}_table", node.input[1]], list(node.output)))
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    from modelpress.kv_cache import KVLayout
    from modelpress.models import load_model_and_preprocessor
    from modelpress.tasks import configure_task

    folder = make_tiny_causal_lm(tmp_path_factory.mktemp("gpt2"), family="gpt2")
    task = configure_task("text-generation")
    model, tokenizer = load_model_and_preprocessor(str(folder), task)
    result = export_model(task, model, tokenizer, folder / "model.onnx", opset=18, atol=1e-4)
    layout = KVLayout.from_config(model.config)
    rng = np.random.default_rng(3)

    def feed(batch: int, length: int) -> dict:
        ids = rng.integers(0, model.config.vocab_size, (batch, length))
        return {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "position_ids": np.arange(length)[None].repeat(batch, 0),
            **layout.empty(batch),
        }

    return result.path, [feed(4, 24) for _ in range(4)], feed(2, 12)


@pytest.mark.parametrize("method, budget", [("awq", 0.0), ("gptq", 0.3)])
def test_the_data_aware_graph_runs_and_equals_its_dequantized_weights(gpt2, tmp_path, method, budget):
    from modelpress.quantize.weight_only import quantize_weights_only

    path, feeds, probe = gpt2
    cfg = QuantizeConfig(
        mode="weight-only",
        weight_bits=4,
        block_size=16,
        head_bits=4,
        accuracy_level=0,
        int4_method=method,
        int8_budget=budget,
    )
    summary = quantize_weights_only(path, tmp_path / "q.onnx", cfg, feeds)
    assert len(summary.layers) == 9 and summary.shared_embeddings == ("node_embedding",)
    assert {layer.bits for layer in summary.layers} == ({4, 8} if budget else {4})
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    ops = [n.op_type for n in quantized.graph.node]
    weights = {i.name for i in quantized.graph.initializer}
    assert ops.count("MatMulNBits") == 9 and ops.count("GatherBlockQuantized") == 1
    assert not any(n.op_type == "MatMul" and n.input[1] in weights for n in quantized.graph.node)
    got = _session(quantized).run(None, probe)[0]
    want = _session(_dequantized_reference(quantized)).run(None, probe)[0]
    fp32 = _session(onnx.load(str(path))).run(None, probe)[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert 1e-4 < np.abs(got - fp32).max() < 0.5 * np.abs(fp32).max()  # quantized, and still the same model


def test_the_int8_budget_keeps_the_most_sensitive_matmuls_8_bit_within_its_bytes(gpt2, tmp_path):
    from modelpress.quantize.weight_only import quantize_weights_only

    path, feeds, _ = gpt2
    budget = 0.2
    cfg = QuantizeConfig(
        mode="weight-only", weight_bits=4, block_size=16, head_bits=4, int4_method="awq", int8_budget=budget
    )
    summary = quantize_weights_only(path, tmp_path / "q.onnx", cfg, feeds)
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    inits = {i.name: i for i in graph.initializer}
    bits_of, codes, scales = {}, {}, {}
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            name = node.name.rsplit("_Q", 1)[0]
            bits_of[name] = attrs["bits"]
            codes[name] = int(np.prod(inits[node.input[1]].dims)) * 8 // attrs["bits"]  # weights, K padded
            scales[name] = int(np.prod(inits[node.input[2]].dims))
    int4_bytes = {n: codes[n] // 2 + 4 * scales[n] for n in codes}
    all_int4 = sum(int4_bytes.values())
    extra = sum(codes[n] // 2 for n, b in bits_of.items() if b == 8)
    kept = {layer.node for layer in summary.layers if layer.bits == 8}
    assert kept == {n for n, b in bits_of.items() if b == 8} and kept
    assert extra <= budget * all_int4
    # the most sensitive MatMul that fits the budget alone is among those kept
    sensitivity = sorted(summary.layers, key=lambda layer: layer.error - layer.error_int8, reverse=True)
    first_fit = next(layer.node for layer in sensitivity if codes[layer.node] // 2 <= budget * all_int4)
    assert first_fit in kept
    assert all(layer.error_int8 < layer.error for layer in summary.layers)


@pytest.mark.parametrize(
    "quantize, message",
    [
        ({"weight_bits": 4, "int4_method": "hqq"}, "quantize.int4_method: expected one of rtn, awq, gptq, got 'hqq'"),
        ({"weight_bits": 4, "int8_budget": 1.5}, "quantize.int8_budget: expected <= 1.0, got 1.5"),
        (
            {"weight_bits": 8, "int8_budget": 0.1},
            'quantize.int8_budget: only for mode = "weight-only" with weight_bits',
        ),
        ({"weight_bits": 4, "head_bits": 6}, "quantize.head_bits: expected 8 or 4, got 6"),
    ],
)
def test_the_int4_keys_refuse_bad_values_in_one_line_exit_2(tmp_path, capsys, quantize, message):
    from conftest import write_recipe

    from modelpress.cli import main

    recipe = write_recipe(
        tmp_path / "r.toml",
        {"name": "r", "teacher": str(tmp_path), "task": "text-generation"},
        {"quantize": {"mode": "weight-only", **quantize}},
    )
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def _bits_by_node(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """{replaced MatMul: (bits, block_size)} of each MatMulNBits."""
    out = {}
    for node in model.graph.node:
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            attrs = {a.name: a.i for a in node.attribute}
            out[node.name.rsplit("_Q", 1)[0]] = (attrs["bits"], attrs["block_size"])
    return out


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_head_bits_8_writes_the_lm_head_8_bit_and_the_tied_lookup_reads_it(gpt2, tmp_path, method):
    from modelpress.quantize.weight_only import quantize_weights_only

    path, feeds, probe = gpt2
    fp32 = onnx.load(str(path))
    head = next(n.name for n in fp32.graph.node if n.output[0] == fp32.graph.output[0].name)  # writes the logits
    cfg = QuantizeConfig(
        mode="weight-only", weight_bits=4, block_size=16, accuracy_level=0, int4_method=method, head_bits=8
    )
    summary = quantize_weights_only(path, tmp_path / "q.onnx", cfg, feeds if method != "rtn" else None)
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    bits = _bits_by_node(quantized)
    lookup = summary.shared_embeddings[0]
    # hidden 32: no whole block of 128 rows, so the head keeps the graph's block
    assert bits.pop(head) == (8, 16) and bits.pop(lookup) == (8, 16)
    assert len(bits) == 8 and set(bits.values()) == {(4, 16)}
    assert summary.eight_bit_nodes == (head,)
    if method == "gptq":
        assert {(layer.node, layer.bits, layer.method) for layer in summary.layers if layer.bits == 8} == {
            (head, 8, "rtn")
        }
    got = _session(quantized).run(None, probe)[0]
    want = _session(_dequantized_reference(quantized)).run(None, probe)[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    # closer to fp32 than the same graph with the head at 4 bits
    all_int4 = quantize_weights_only(path, tmp_path / "q4.onnx", cfg.with_(head_bits=4), feeds)
    assert all_int4.eight_bit_nodes == ()
    reference = _session(fp32).run(None, probe)[0]
    int4_error = np.abs(_session(onnx.load(str(tmp_path / "q4.onnx"))).run(None, probe)[0] - reference).mean()
    assert np.abs(got - reference).mean() < int4_error


def test_an_8_bit_head_of_whole_128_row_blocks_takes_them_and_the_lookup_reads_its_rows(tmp_path):
    """ids → Gather(E) → MatMul(W1) → MatMul(Eᵀ) → logits, K = 256: the body int4 at block 32, the tied
    head 8-bit at block 128; lookups and logits against numpy's own blockwise quantization."""
    from test_weight_only import _dequantized

    from modelpress.quantize.blockwise import head_block
    from modelpress.quantize.weight_only import quantize_weights_only

    assert (head_block(896, 32), head_block(70, 32), head_block(256, 256)) == (128, 32, 256)
    rng = np.random.default_rng(5)
    vocab, k = 300, 256
    table = rng.standard_normal((vocab, k)).astype(np.float32)
    w1 = (rng.standard_normal((k, k)) / 16).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["E", "ids"], ["x"], name="embed"),
            helper.make_node("MatMul", ["x", "W1"], ["h"], name="body"),
            helper.make_node("Transpose", ["E"], ["Et"], name="tie", perm=[1, 0]),
            helper.make_node("MatMul", ["h", "Et"], ["logits"], name="lm_head"),
        ],
        "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 5])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5, vocab])],
        [numpy_helper.from_array(table, "E"), numpy_helper.from_array(w1, "W1")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "m.onnx")
    cfg = QuantizeConfig(
        mode="weight-only", weight_bits=4, block_size=32, accuracy_level=0, int4_method="rtn", head_bits=8
    )
    summary = quantize_weights_only(tmp_path / "m.onnx", tmp_path / "q.onnx", cfg)
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    assert _bits_by_node(quantized) == {"body": (4, 32), "lm_head": (8, 128), "embed": (8, 128)}
    assert summary.shared_embeddings == ("embed",) and summary.eight_bit_nodes == ("lm_head",)
    shapes = {tuple(i.dims) for i in quantized.graph.initializer if i.data_type == TensorProto.FLOAT}
    assert not shapes & {(vocab, k), (k, vocab)}  # the fp32 table and its transpose are gone
    ids = np.array([[0, 7, 299, 7, 150]])
    head = _dequantized(table.T.copy(), 8, 128)  # [K, V]
    rows = head.T[ids]
    quantized.graph.output.append(helper.make_empty_tensor_value_info("x"))
    got_rows, got_logits = _session(quantized).run(["x", "logits"], {"ids": ids})
    np.testing.assert_allclose(got_rows, rows, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got_logits, rows @ _dequantized(w1, 4, 32) @ head, rtol=1e-4, atol=1e-4)


def _matmulnbits_weights(path) -> dict[str, np.ndarray]:
    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    return {
        f"{n.name}:{k}": numpy_helper.to_array(inits[n.input[k]])
        for n in graph.node
        if n.op_type == "MatMulNBits"
        for k in (1, 2)
    }


@pytest.mark.parametrize("method, budget", [("awq", 0.0), ("gptq", 0.2)])
def test_statistics_in_many_passes_write_the_graph_one_pass_writes(gpt2, tmp_path, monkeypatch, caplog, method, budget):
    """The memory bound splits calibration into passes (here one per activation); each activation is
    sampled as in one pass, so the integers, the records and the int8 choice are the same."""
    from modelpress.quantize import int4_data
    from modelpress.quantize.weight_only import quantize_weights_only

    path, feeds, _ = gpt2
    cfg = QuantizeConfig(
        mode="weight-only", weight_bits=4, block_size=16, head_bits=4, int4_method=method, int8_budget=budget
    )
    one = quantize_weights_only(path, tmp_path / "one.onnx", cfg, iter(feeds))
    monkeypatch.setattr(int4_data, "STATS_SHARE", 1e-9)
    with caplog.at_level("INFO", logger="modelpress.quantize.int4_data"):
        many = quantize_weights_only(path, tmp_path / "many.onnx", cfg, iter(feeds))  # a one-shot iterator too
    # one pass per MatMul input: 4 per block, 2 blocks, and the head's
    assert any("statistics in 9 calibration passes" in r.getMessage() for r in caplog.records)
    assert many.layers == one.layers and {layer.bits for layer in one.layers} == ({4, 8} if budget else {4})
    a, b = _matmulnbits_weights(tmp_path / "one.onnx"), _matmulnbits_weights(tmp_path / "many.onnx")
    assert a.keys() == b.keys() and len(a) == 18
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not list(tmp_path.glob(".int4-weights-*"))  # the weights' work folder is gone


def test_gptq_by_column_chunks_equals_gptq_on_the_whole_weight(monkeypatch):
    """Columns are independent under GPTQ (one Hessian): chunking them (an LM head's bounded memory)
    changes nothing, and an all-zero input row (a dead channel) stays code 0."""
    from modelpress.quantize import chunks
    from modelpress.quantize.int4_gptq import gptq_quantize

    rng = np.random.default_rng(7)
    x = rng.standard_normal((300, 70)) @ rng.standard_normal((70, 70))
    x[:, 3] = 0.0
    xtx = (x.T @ x).astype(np.float32)
    w = rng.standard_normal((70, 45)).astype(np.float32)
    whole = gptq_quantize(w, xtx, bits=4, block=16)
    monkeypatch.setattr(chunks, "COLUMNS", 8)
    chunked = gptq_quantize(w, xtx, bits=4, block=16)
    np.testing.assert_allclose(chunked.dequantized(), whole.dequantized(), rtol=0, atol=1e-6)
    assert (chunked.codes == whole.codes).mean() > 0.999 and (whole.codes[3] == 0).all()
    np.testing.assert_array_equal(chunked.dequantized(slice(8, 16)), chunked.dequantized()[:, 8:16])


def test_gptq_hessian_factor_is_the_upper_cholesky_factor_of_the_damped_inverse():
    """One factorization and one triangular inverse give what GPTQ's reference computes (H⁻¹, then its
    upper Cholesky factor): U upper, UᵀU = (H + damping)⁻¹, a dead input's row left as the identity's."""
    from modelpress.quantize.int4_gptq import DAMP, inverse_cholesky

    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 90)) * rng.uniform(0.05, 4.0, 90)
    x[:, 11] = 0.0
    h = (x.T @ x).astype(np.float32)  # as the statistics hold it
    u, dead = inverse_cholesky(h)
    damped = h.astype(np.float64)
    damped[11, 11] = 1.0
    damped[np.diag_indices_from(damped)] += DAMP * np.mean(np.diag(damped))
    reference = np.linalg.cholesky(np.linalg.inv(damped)).T
    assert dead.tolist() == [i == 11 for i in range(90)] and np.allclose(u, np.triu(u))
    np.testing.assert_allclose(u, reference, rtol=1e-6, atol=1e-9 * np.abs(reference).max())
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(damped), rtol=1e-6, atol=1e-9 * np.abs(reference).max() ** 2)


def test_offloaded_weights_leave_memory_and_come_back_equal(tmp_path):
    """``DiskWeights.offload`` keeps only references in the model it returns; it reads each weight
    back, writes new large ones beside them (page-aligned, appended) and ``reload`` restores the
    rest, bit for bit; ``close`` removes its folder."""
    from modelpress.quantize.offload import DiskWeights

    rng = np.random.default_rng(0)
    values = {f"w{i}": rng.standard_normal((64, 32)).astype(np.float32) for i in range(3)}
    values["tiny"] = np.arange(4, dtype=np.float32)  # under the threshold: stays in the graph
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w0"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        [numpy_helper.from_array(v, k) for k, v in values.items()],
    )
    (tmp_path / "model.onnx").write_bytes(b"")
    weights = DiskWeights.beside(tmp_path / "model.onnx", ".w-")
    skeleton = weights.offload(helper.make_model(graph))
    held = {t.name: len(t.raw_data) for t in skeleton.graph.initializer}
    assert held["tiny"] == 16 and all(held[f"w{i}"] == 0 for i in range(3))
    for tensor in skeleton.graph.initializer:
        np.testing.assert_array_equal(weights.array(tensor), values[tensor.name])
    for i in range(2):  # two appended to one file, each at its own page
        values[f"new{i}"] = rng.standard_normal((33, 17)).astype(np.float32)
        written = weights.tensor(values[f"new{i}"], f"new{i}")
        assert written.data_location == TensorProto.EXTERNAL and int(written.external_data[1].value) % 4096 == 0
        skeleton.graph.initializer.append(written)
    assert weights.tensor(np.ones(3, np.float32), "small").raw_data  # small: in the graph
    weights.reload(skeleton)
    for tensor in skeleton.graph.initializer:
        assert not tensor.HasField("data_location")
        np.testing.assert_array_equal(numpy_helper.to_array(tensor), values[tensor.name])
    weights.close()
    assert not weights.folder.exists()


def test_a_read_only_model_folder_puts_the_weights_work_folder_in_the_temporary_folder(tmp_path, monkeypatch):
    """The work folder goes beside the model; where that folder cannot be written (a read-only model
    store: simulated, as root writes anywhere) it goes to the system's temporary folder instead."""
    import tempfile
    from pathlib import Path

    from modelpress.quantize import offload

    store = tmp_path / "store"
    store.mkdir()
    beside = offload.DiskWeights.beside(store / "model.onnx", ".w-")
    assert beside.folder.parent == store
    beside.close()
    real = tempfile.TemporaryDirectory

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == store:
            raise PermissionError(13, "Permission denied", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(offload.tempfile, "TemporaryDirectory", read_only)
    weights = offload.DiskWeights.beside(store / "model.onnx", ".w-")
    assert weights.folder.parent == Path(tempfile.gettempdir()) and weights.folder.is_dir()
    weights.close()
    assert not weights.folder.exists()


def test_an_8_bit_head_is_quantized_a_chunk_of_columns_at_a_time_and_equals_the_whole(gpt2, tmp_path, monkeypatch):
    """A Qwen-sized head is 544 MB in fp32: GPTQ's pass quantizes it 8-bit a chunk of output columns at a
    time (whole, the 0.5 B default press peaked at 3.18× its fp32 weights), and the chunks' codes and
    scales are the whole matrix's."""
    from modelpress.quantize import blockwise, chunks
    from modelpress.quantize.weight_only import quantize_weights_only

    rng = np.random.default_rng(9)
    w = rng.standard_normal((64, 50)).astype(np.float32)
    rows = rng.uniform(0.5, 2.0, (64, 1)).astype(np.float32)
    monkeypatch.setattr(chunks, "COLUMNS", 8)
    whole, by_columns = blockwise.quantize_rtn(w * rows, 8, 32), blockwise.quantize_rtn_by_columns(w, 8, 32, rows)
    np.testing.assert_array_equal(by_columns.codes, whole.codes)
    np.testing.assert_array_equal(by_columns.scales, whole.scales)
    widths = []
    real = blockwise.quantize_rtn
    monkeypatch.setattr(
        blockwise, "quantize_rtn", lambda w, bits, *a: widths.append((bits, w.shape[1])) or real(w, bits, *a)
    )
    path, feeds, _ = gpt2
    cfg = QuantizeConfig(mode="weight-only", weight_bits=4, block_size=16, int4_method="gptq", head_bits=8)
    assert quantize_weights_only(path, tmp_path / "q.onnx", cfg, feeds).eight_bit_nodes
    eight = [width for bits, width in widths if bits == 8]
    assert eight and max(eight) <= 8
