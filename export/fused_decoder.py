"""Llama / Qwen2 / Qwen3 → one ONNX decoder graph in the fused layout onnxruntime-genai's builder
writes, from the Hugging Face weights (``task_options.decoder_graph = "fused"``).

Where ``export.causal_lm`` traces the family's PyTorch code (~2,000 nodes: RMSNorm as
Pow/ReduceMean/Sqrt, rotary as slices, attention as separate MatMuls, the cache concatenated every
step), this module writes the graph a layer at a time with ONNX Runtime's fused operators:

- ``SimplifiedLayerNormalization`` (the first RMSNorm) and ``SkipSimplifiedLayerNormalization``
  (every later one: the residual add and the norm in one node, the sum as its 4th output);
- one ``MatMul`` for q, k and v (their weights side by side; Qwen2's biases one ``Add``);
- ``GroupQueryAttention`` (``com.microsoft``) with the rotary embedding inside (``do_rotary``, cos/sin
  caches computed by the family's own rotary module, so rope scaling comes along), grouped KV heads,
  and the cache appended in place: a past that is the same buffer as the present
  (``past_present_share_buffer``, a max-length buffer bound with IO binding: ``generation``) is
  written at each row's length, nothing copied; a past of the used length (every other caller)
  gets a present one step longer, as the traced export's;
- Qwen3's per-head q/k RMSNorm as ``SimplifiedLayerNormalization`` on [.., heads, head_dim]
  (ONNX Runtime's CPU kernel does not take GQA's ``q_norm_weight``), before the rotary;
- SiLU-gated MLP; the LM head a ``MatMul`` on a ``Transpose`` of the embedding table when tied (the
  file holds the matrix once; the quantizers fold it and share one quantized matrix: ``quantize.tied``).

The interface is the traced export's (``kv_cache``): ``input_ids``, ``attention_mask``,
``position_ids``, ``past_key_values.%d.key/value`` in; ``logits``, ``present.%d.key/value`` out.
GroupQueryAttention reads each row's length from the mask (``seqlens_k`` = its sum − 1) and puts
the new tokens right after it: rows are **right-padded** (graph metadata ``modelpress.padding``),
positions follow from the lengths, and ``position_ids`` is taken but not read. Weight-only and
static int8 quantization apply to its MatMuls as to the traced graph's.

Parity is checked against PyTorch on a right-padded prefill and several decode steps fed with the
graph's own ``present`` (each row's reference: the model on that row's tokens alone).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from modelpress.errors import BadInputError
from modelpress.export.onnx_export import ExportResult
from modelpress.export.parity import ParityReport, compare_outputs
from modelpress.fileio import EXTERNAL_DATA_BYTES, external_tensor, save_onnx
from modelpress.memory import release_weight_pages
from modelpress.kv_cache import FIXED_INPUTS, LOGITS_TO_KEEP, PADDING_KEY, KVLayout
from modelpress.kv_cache import fused_graph_unsupported as supports

log = logging.getLogger(__name__)

PARITY = {"batch": 2, "prompt": 6, "steps": 3}  # a right-padded prefill, then decode steps
OPSET = 21


class _Graph:
    """Nodes and initializers appended in order; names are the builder's own. With ``data`` (an open
    binary file beside the model) every weight of 1 KiB or more is written there as it is made and
    the initializer only refers to it: the graph of a large model never holds its weights in memory."""

    def __init__(self, data: BinaryIO | None = None, location: str = "") -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.data, self.location = data, location

    def const(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        if self.data is None or array.nbytes < 1024:
            self.inits.append(numpy_helper.from_array(array, name))
            return name
        self.inits.append(external_tensor(self.data, self.location, array, name))
        return name

    def node(self, op: str, inputs: list[str], outputs: int | list[str] = 1, *, name: str, **attrs: Any) -> list[str]:
        outs = [f"{name}/out{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
        domain = attrs.pop("domain", "")
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain, **attrs))
        return outs


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


def _linear(g: _Graph, x: str, weights: list[torch.nn.Linear], name: str) -> str:
    """``x`` through the linears side by side: one MatMul (and one Add when they have biases)."""
    w = np.concatenate([_np(m.weight).T for m in weights], axis=1)
    (y,) = g.node("MatMul", [x, g.const(f"{name}.weight", w)], name=f"{name}/MatMul")
    biases = [m.bias for m in weights]
    if all(b is None for b in biases):
        return y
    b = np.concatenate(
        [_np(b) if b is not None else np.zeros(m.out_features, np.float32) for b, m in zip(biases, weights)]
    )
    (y,) = g.node("Add", [y, g.const(f"{name}.bias", b)], name=f"{name}/Add")
    return y


def _rotary_caches(model: Any, positions: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [positions, head_dim / 2] from the family's own rotary module (its scaling included)."""
    rotary = model.model.rotary_emb
    with torch.no_grad():
        cos, sin = rotary(torch.zeros(1, dtype=torch.float32), torch.arange(positions)[None])
    return _np(cos[0, :, : head_dim // 2]), _np(sin[0, :, : head_dim // 2])


def _head_norm(g: _Graph, x: str, norm: Any, head_dim: int, eps: float, name: str) -> str:
    """Qwen3's RMSNorm of each head of ``x`` [b, s, heads·head_dim]."""
    shape_in = g.const(f"{name}/shape_in", np.array([0, 0, -1, head_dim], np.int64))
    shape_out = g.const(f"{name}/shape_out", np.array([0, 0, -1], np.int64))
    (h,) = g.node("Reshape", [x, shape_in], name=f"{name}/Reshape")
    (h,) = g.node(
        "SimplifiedLayerNormalization",
        [h, g.const(f"{name}.weight", _np(norm.weight))],
        name=f"{name}/SimplifiedLayerNorm",
        axis=-1,
        epsilon=eps,
        stash_type=1,
    )
    (h,) = g.node("Reshape", [h, shape_out], name=f"{name}/Reshape_1")
    return h


def _attention(g: _Graph, x: str, attn: Any, i: int, cfg: Any, layout: KVLayout, mask: tuple[str, str]) -> str:
    heads, kv, hd = cfg.num_attention_heads, layout.num_kv_heads, layout.head_dim
    name = f"/model/layers.{i}/attn"
    qkv = _linear(g, x, [attn.q_proj, attn.k_proj, attn.v_proj], f"{name}/qkv_proj")
    if hasattr(attn, "q_norm"):  # Qwen3: q and k normed per head before the rotary
        split = g.const(f"{name}/split", np.array([heads * hd, kv * hd, kv * hd], np.int64))
        q, k, v = g.node("Split", [qkv, split], 3, name=f"{name}/Split", axis=-1)
        eps = float(cfg.rms_norm_eps)
        q = _head_norm(g, q, attn.q_norm, hd, eps, f"{name}/q_norm")
        k = _head_norm(g, k, attn.k_norm, hd, eps, f"{name}/k_norm")
        qkv_in = [q, k, v]
    else:
        qkv_in = [qkv, "", ""]  # packed: GQA splits it itself
    scale = float(getattr(attn, "scaling", hd**-0.5))
    out, _, _ = g.node(
        "GroupQueryAttention",
        [*qkv_in, f"past_key_values.{i}.key", f"past_key_values.{i}.value", *mask, "cos_cache", "sin_cache"],
        [f"{name}/GQA/out0", f"present.{i}.key", f"present.{i}.value"],
        name=f"{name}/GQA",
        domain="com.microsoft",
        num_heads=heads,
        kv_num_heads=kv,
        do_rotary=1,
        rotary_interleaved=0,
        scale=scale,
    )
    return _linear(g, out, [attn.o_proj], f"{name}/o_proj")


def _mlp(g: _Graph, x: str, mlp: Any, i: int) -> str:
    name = f"/model/layers.{i}/mlp"
    # gate and up side by side: one weight-only kernel call (one int8 quantization of x) instead of two
    both = _linear(g, x, [mlp.gate_proj, mlp.up_proj], f"{name}/gate_up_proj")
    split = g.const(f"{name}/split", np.array([mlp.gate_proj.out_features, mlp.up_proj.out_features], np.int64))
    gate, up = g.node("Split", [both, split], 2, name=f"{name}/Split", axis=-1)
    (s,) = g.node("Sigmoid", [gate], name=f"{name}/act/Sigmoid")
    (a,) = g.node("Mul", [gate, s], name=f"{name}/act/Mul")
    (h,) = g.node("Mul", [a, up], name=f"{name}/Mul")
    return _linear(g, h, [mlp.down_proj], f"{name}/down_proj")


def _mask_lengths(g: _Graph) -> tuple[str, str]:
    """(seqlens_k [batch] int32: each row's length − 1, total_sequence_length int32: the mask's width)."""
    name = "/model/attn_mask"
    one = g.const(f"{name}/one", np.array(1, np.int64))
    axis = g.const(f"{name}/axis", np.array([1], np.int64))
    (total,) = g.node("ReduceSum", ["attention_mask", axis], name=f"{name}/ReduceSum", keepdims=0)
    (last,) = g.node("Sub", [total, one], name=f"{name}/Sub")
    (seqlens,) = g.node("Cast", [last], name=f"{name}/Cast", to=TensorProto.INT32)
    (shape,) = g.node("Shape", ["attention_mask"], name=f"{name}/Shape")
    (width,) = g.node("Gather", [shape, one], name=f"{name}/Gather", axis=0)
    (width,) = g.node("Cast", [width], name=f"{name}/Cast_1", to=TensorProto.INT32)
    return seqlens, width


def build_graph(model: Any, *, positions: int | None = None, data: Path | None = None) -> onnx.ModelProto:
    """The fused decoder graph of ``model`` (a Llama / Qwen2 / Qwen3 ``*ForCausalLM``); with ``data``
    its weights are streamed into that file (the graph refers to it by name: keep it beside the model)."""
    if data is None:
        return _build(model, _Graph(), positions)
    with open(data, "wb") as fh:
        return _build(model, _Graph(fh, data.name), positions)


def _build(model: Any, g: _Graph, positions: int | None) -> onnx.ModelProto:
    cfg = model.config
    why = supports(cfg)
    if why is not None:
        raise BadInputError(f"task_options.decoder_graph = 'fused': not for {why}; use 'traced'")
    layout = KVLayout.from_config(cfg)
    positions = int(positions or cfg.max_position_embeddings)
    eps = float(cfg.rms_norm_eps)
    cos, sin = _rotary_caches(model, positions, layout.head_dim)
    g.const("cos_cache", cos)
    g.const("sin_cache", sin)
    mask = _mask_lengths(g)
    table = _np(model.model.embed_tokens.weight)
    (hidden,) = g.node("Gather", [g.const("model.embed_tokens.weight", table), "input_ids"], name="/model/embed_tokens")
    residual = hidden
    pending = ""  # the last sublayer's output, still to be added to the residual ("": none yet)
    norms = [(layer.input_layernorm, layer.post_attention_layernorm) for layer in model.model.layers]
    for i, layer in enumerate(model.model.layers):
        for part, norm in zip(("attn", "mlp"), norms[i]):
            name = f"/model/layers.{i}/{part}_norm"
            weight = g.const(f"{name}.weight", _np(norm.weight))
            if not pending:
                (x,) = g.node(
                    "SimplifiedLayerNormalization", [residual, weight], name=name, axis=-1, epsilon=eps, stash_type=1
                )
            else:
                # mean and inverse deviation unnamed: nothing reads them, ONNX Runtime need not write them
                x, _, _, residual = g.node(
                    "SkipSimplifiedLayerNormalization",
                    [pending, residual, weight],
                    [f"{name}/out0", "", "", f"{name}/out3"],
                    name=name,
                    domain="com.microsoft",
                    epsilon=eps,
                )
            if part == "attn":
                pending = _attention(g, x, layer.self_attn, i, cfg, layout, mask)
            else:
                pending = _mlp(g, x, layer.mlp, i)
    final = g.const("model.norm.weight", _np(model.model.norm.weight))
    (x,) = g.node(
        "SkipSimplifiedLayerNormalization",
        [pending, residual, final],
        ["/model/norm/out0"],
        name="/model/norm",
        domain="com.microsoft",
        epsilon=eps,
    )
    # logits_to_keep (an overridable initializer, 0: every position): generation asks for the prompt's last
    # positions only, so a prefill of 128 tokens runs the LM head (a quarter of a 0.5 B model's MACs) once
    (keep,) = g.node("Neg", [LOGITS_TO_KEEP], name="/lm_head/keep/Neg")
    end = g.const("/lm_head/keep/end", np.array([np.iinfo(np.int64).max], np.int64))
    (x,) = g.node("Slice", [x, keep, end, g.const("/lm_head/keep/axis", np.array([1], np.int64))], name="/lm_head/keep")
    head = model.get_output_embeddings().weight
    if head is model.model.embed_tokens.weight:
        # tied: the head reads the table through a Transpose (the file holds the matrix once; ONNX Runtime
        # folds it when it opens the graph, and the quantizers fold it into the head's own weight and
        # then share one quantized matrix for both: quantize.tied)
        (weight,) = g.node("Transpose", ["model.embed_tokens.weight"], name="/lm_head/tied", perm=[1, 0])
    else:
        weight = g.const("lm_head.weight", _np(head).T)
    g.node("MatMul", [x, weight], ["logits"], name="/lm_head/MatMul")
    return _model(g, layout, vocab=int(head.shape[0]))


def _model(g: _Graph, layout: KVLayout, *, vocab: int) -> onnx.ModelProto:
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    past = ["batch_size", layout.num_kv_heads, "past_sequence_length", layout.head_dim]
    present = ["batch_size", layout.num_kv_heads, "total_sequence_length", layout.head_dim]
    inputs = [
        helper.make_tensor_value_info("input_ids", i64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", i64, ["batch_size", "total_sequence_length"]),
        helper.make_tensor_value_info("position_ids", i64, ["batch_size", "sequence_length"]),
        *(helper.make_tensor_value_info(n, f32, past) for n in layout.past_names()),
        helper.make_tensor_value_info(LOGITS_TO_KEEP, i64, [1]),
    ]
    g.inits.append(numpy_helper.from_array(np.array([0], np.int64), LOGITS_TO_KEEP))  # its default: all
    outputs = [
        helper.make_tensor_value_info("logits", f32, ["batch_size", "logits_length", vocab]),
        *(helper.make_tensor_value_info(n, f32, present) for n in layout.present_names()),
    ]
    graph = helper.make_graph(g.nodes, "fused_decoder", inputs, outputs, initializer=g.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="modelpress",
    )
    model.ir_version = 10
    helper.set_model_props(model, {PADDING_KEY: "right"})
    return model


def _reference_logits(model: Any, rows: list[np.ndarray]) -> list[np.ndarray]:
    """Each row's logits [len, vocab] from the model on that row alone (no padding, no cache)."""
    with torch.no_grad():
        return [_np(model(input_ids=torch.from_numpy(r)[None]).logits[0]) for r in rows]


def _graph_steps(session: Any, layout: KVLayout, vocab: int) -> list[tuple[list[np.ndarray], list[np.ndarray], tuple]]:
    """A right-padded prefill, then decode steps on the graph's own ``present`` and its own greedy
    tokens: per step, each row's tokens so far, the graph's logits of the positions to compare
    (every real one at the prefill, the new one after) and the step's input shape."""
    rng = np.random.default_rng(0)
    b, n = PARITY["batch"], PARITY["prompt"]
    lengths = [n - 2 * r for r in range(b)]  # row r is right-padded by 2r
    rows = [rng.integers(0, vocab, length).astype(np.int64) for length in lengths]
    ids = np.zeros((b, n), np.int64)
    mask = np.zeros((b, n), np.int64)
    for r, row in enumerate(rows):
        ids[r, : len(row)], mask[r, : len(row)] = row, 1
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": np.zeros_like(ids), **layout.empty(b)}
    steps = []
    for step in range(PARITY["steps"] + 1):
        got = dict(zip(["logits", *layout.present_names()], session.run(None, feed)))
        if step == 0:
            ours = [got["logits"][r, : len(row)] for r, row in enumerate(rows)]
        else:
            ours = [got["logits"][r, 0:1] for r in range(b)]
        steps.append((list(rows), ours, feed["input_ids"].shape))
        nxt = [int(o[-1].argmax()) for o in ours]
        rows = [np.append(row, t) for row, t in zip(rows, nxt)]
        # the cache keeps the prefill's width; each row's mask is its length in ones, then zeros
        width = feed["attention_mask"].shape[1] + 1
        mask = (np.arange(width)[None] < np.array([len(r) for r in rows])[:, None]).astype(np.int64)
        feed = {
            "input_ids": np.array(nxt, np.int64)[:, None],
            "attention_mask": mask,
            "position_ids": np.zeros((b, 1), np.int64),
            **{p: got[q] for p, q in zip(layout.past_names(), layout.present_names())},
        }
    return steps


def _parity(model: Any, steps: list, *, atol: float, path: str) -> list[ParityReport]:
    """Each step's graph logits against the model's on each row alone (no padding, no cache)."""
    reports = []
    for step, (rows, ours, shape) in enumerate(steps):
        reference = _reference_logits(model, rows)
        theirs = reference if step == 0 else [ref[-1:] for ref in reference]
        label = "fused export (prefill)" if step == 0 else f"fused export (decode step {step})"
        reports.append(
            compare_outputs(
                {"logits": np.concatenate(ours)},
                {"logits": np.concatenate(theirs)},
                atol=atol,
                label=label,
                source=path,
                feed_shape=shape,
            )
        )
    return reports


def export_fused_decoder(model: Any, tokenizer: Any, out_path: str | Path, *, atol: float = 1e-4) -> ExportResult:
    """``model`` → ``out_path`` in the fused layout, parity-checked."""
    out_path = Path(out_path)
    model = model.eval()
    layout = KVLayout.from_config(model.config)
    start = time.perf_counter()
    # a large model's weights stream to <file>.data as they are made (weights + a tied head's copy may pass 2 GiB)
    large = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES // 2
    data = out_path.with_name(out_path.name + ".data")
    if not large and data.exists():
        data.unlink()  # a stale file of an earlier export: this model's weights stay inline
    graph = build_graph(model, data=data if large else None)
    vocab = int(model.get_output_embeddings().weight.shape[0])
    save_onnx(graph, out_path, external_data=False)
    del graph
    seconds = time.perf_counter() - start
    # the graph's steps first, then PyTorch's: its weights and the session's are never resident together
    # (the 0.5 B export peaked at 2.5x the fp32 weights with both); PyTorch's mapped pages go back first
    release_weight_pages()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(out_path), opts, providers=["CPUExecutionProvider"])
    steps = _graph_steps(session, layout, vocab)
    del session
    reports = _parity(model, steps, atol=atol, path=str(out_path))
    worst = max(reports, key=lambda r: r.max_abs_diff)
    log.info(
        "exported %s (fused decoder graph) in %.1fs (parity max |diff| %.2e over a prefill and %d decode steps)",
        out_path,
        seconds,
        worst.max_abs_diff,
        PARITY["steps"],
    )
    names = (*FIXED_INPUTS, *layout.past_names())
    return ExportResult(str(out_path), names, "logits", OPSET, round(seconds, 2), worst)
