"""ONNX Runtime transformer fusion of an exported encoder: ``model.onnx`` → ``model.fused.onnx``
(``Attention``, ``SkipLayerNormalization``, ``BiasGelu``), parity-checked against PyTorch.

ORT's fusion is a pattern matcher over the classic BERT graph. Our dynamo export of a
transformers 5 model matched none of its attention patterns (the mask is built by
``masking_utils`` as a Where/And chain, the score scale is a ``Mul``), so for the families it
handles the export is written in the form it recognises: the 2-D ``attention_mask`` input turned
into the additive ``(1 - mask) * min`` term inside the graph (:func:`additive_mask`), and the
scores computed by :func:`fusable_attention` (``QKᵀ / √d + mask``). The computation is the same
(parity is checked at export either way). ``split_unsqueezes`` undoes the one rewrite of the
exporter's optimizer (two ``Unsqueeze`` merged into one) that the matcher trips on. The int8
``ort`` graph is quantized on top of the fused graph (``modelpress.quantize.fused``); the portable
Q/DQ graphs (TensorRT, OpenVINO) come from ``model.onnx``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from modelpress.export.parity import ParityReport, check_parity
from modelpress.fileio import atomic_path, load_onnx, save_onnx
from modelpress.paths import MODEL_FUSED_ONNX
import torch
from transformers import AttentionInterface
from onnxruntime.transformers.optimizer import optimize_by_fusion
import tempfile
import onnxruntime as ort

log = logging.getLogger(__name__)

#: transformers model_type → the fusion optimizer's model type (bidirectional encoder families;
#: a decoder must never get the additive mask, which would drop its causal mask)
FUSION_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert", "electra": "bert"}
FUSABLE_ATTENTION = "modelpress_fusable"
#: model.onnx metadata key: {"model_type", "num_heads", "hidden_size"} of a graph in the fusable form
FUSION_METADATA = "modelpress.fusion"
#: the ops whose count the report and the tests read
FUSED_OPS = ("Attention", "SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "LayerNormalization")


def fusable(model_config: Any) -> bool:
    return getattr(model_config, "model_type", None) in FUSION_MODEL_TYPES


def fusable_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **_):
    """transformers' eager attention written as ``softmax(QKᵀ / √d + mask) V`` (a ``Div``, then
    the mask ``Add``): the shape ORT's BERT attention fusion matches."""

    divisor = (1.0 / scaling) if scaling else float(query.shape[-1]) ** 0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) / divisor
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def additive_mask(attention_mask):
    """[B, S] 0/1 → [B, 1, 1, S] additive float mask (transformers passes a 4-D mask through)."""

    mask = attention_mask.unsqueeze(1).unsqueeze(2).to(torch.float32)
    return (1.0 - mask) * torch.finfo(torch.float32).min


@contextlib.contextmanager
def fusable_form(model: Any) -> Iterator[None]:
    """The model computes attention with :func:`fusable_attention` inside the block."""

    AttentionInterface.register(FUSABLE_ATTENTION, fusable_attention)
    before = model.config._attn_implementation
    model.set_attn_implementation(FUSABLE_ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def split_unsqueezes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``Unsqueeze(x, [a, b])`` → ``Unsqueeze(Unsqueeze(x, [a]), [b])`` (same tensor)."""
    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consts.update(
        {
            n.output[0]: numpy_helper.to_array(n.attribute[0].t)
            for n in g.node
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"
        }
    )
    nodes = []
    for n in g.node:
        axes = consts.get(n.input[1]) if n.op_type == "Unsqueeze" and len(n.input) > 1 else None
        if axes is None or axes.size != 2:
            nodes.append(n)
            continue
        first, second = sorted(int(a) for a in axes.ravel())
        if first < 0:  # negative axes count from the output rank: keep the node as written
            nodes.append(n)
            continue
        names = []
        for i, axis in enumerate((first, second)):
            names.append(f"{n.name}_axis{i}")
            g.initializer.append(numpy_helper.from_array(np.array([axis], dtype=np.int64), names[-1]))
        half = f"{n.output[0]}_half"
        nodes.append(onnx.helper.make_node("Unsqueeze", [n.input[0], names[0]], [half], name=f"{n.name}_a"))
        nodes.append(onnx.helper.make_node("Unsqueeze", [half, names[1]], [n.output[0]], name=f"{n.name}_b"))
    del g.node[:]
    g.node.extend(nodes)
    return model


def fused_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    ops = collections.Counter(n.op_type for n in model.graph.node)
    return {op: ops[op] for op in FUSED_OPS if ops[op]}


def fusion_info(model_config: Any) -> dict[str, Any]:
    """What ORT's fusion needs to know of a model: its family, heads and width."""
    cfg = model_config
    return {
        "model_type": cfg.model_type,
        "num_heads": getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_heads", 0),
        "hidden_size": getattr(cfg, "hidden_size", 0) or getattr(cfg, "dim", 0),
    }


def write_fusion_metadata(model: onnx.ModelProto, model_config: Any) -> None:
    """Record :func:`fusion_info` in the graph: an exported file can then be fused wherever it is
    quantized, with nothing else at hand."""
    info = fusion_info(model_config)
    kept = [p for p in model.metadata_props if p.key != FUSION_METADATA]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=FUSION_METADATA, value=json.dumps(info))


def fusion_metadata(model: onnx.ModelProto) -> dict | None:
    for p in model.metadata_props:
        if p.key == FUSION_METADATA:
            return json.loads(p.value)
    return None


def fuse_graph(model: onnx.ModelProto, *, model_type: str, num_heads: int, hidden_size: int) -> onnx.ModelProto:

    prepared = split_unsqueezes(onnx.ModelProto.FromString(model.SerializeToString()))
    # no ORT graph optimisation first: it would merge the Unsqueezes again before matching (the
    # session applies it at load anyway)
    fused = optimize_by_fusion(
        prepared, model_type=FUSION_MODEL_TYPES.get(model_type, "bert"), num_heads=num_heads, hidden_size=hidden_size
    ).model
    if not any(o.domain == "com.microsoft" for o in fused.opset_import):  # the contrib ops' domain
        fused.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return fused


def _save_checked(
    fused: onnx.ModelProto,
    out_path: str | Path,
    feed: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    *,
    atol: float,
    strict: bool,
) -> ParityReport:
    with atomic_path(out_path) as tmp:
        save_onnx(fused, Path(tmp))
        return check_parity(str(tmp), feed, reference, atol=atol, label="fusion", raise_on_failure=strict)


def fuse_exported(
    model_path: str | Path, feed: Mapping[str, np.ndarray], *, atol: float = 1e-3
) -> onnx.ModelProto | None:
    """The fused graph of an exported file that carries the fusion metadata, checked against the
    file itself on ``feed`` (fp32 against fp32); None where it carries none, the fusion finds no
    attention or misses parity."""

    model = load_onnx(model_path, load_external_data=False)  # a decoder's weights are GBs, and it carries none
    info = fusion_metadata(model)
    if info is None:
        return None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        model = load_onnx(model_path)
    if model.ByteSize() > 1_800_000_000:  # the fusion copies the graph in one protobuf
        return None
    fused = fuse_graph(model, **info)
    counts = fused_op_counts(fused)
    if not counts.get("Attention"):
        log.warning("ONNX Runtime's fusion found no attention in %s; the int8 graph is unfused", model_path)
        return None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    reference = dict(zip(names, session.run(names, dict(feed))))
    del session
    with tempfile.TemporaryDirectory(prefix=".fused-", dir=Path(model_path).parent) as work:
        report = _save_checked(fused, Path(work) / MODEL_FUSED_ONNX, feed, reference, atol=atol, strict=False)
    if not report.ok:
        log.warning(
            "the fused graph of %s misses parity (max |diff| %.2e > %.0e); the int8 graph is unfused",
            model_path,
            report.max_abs_diff,
            atol,
        )
        return None
    log.info("fused %s: %s (parity max |diff| %.2e)", model_path, counts, report.max_abs_diff)
    return fused


def fuse(
    onnx_path: str | Path,
    out_path: str | Path,
    *,
    model_type: str,
    num_heads: int,
    hidden_size: int,
    parity_feed: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    atol: float,
) -> tuple[ParityReport, dict[str, int]]:
    """``export.fuse``: fuse, check parity against PyTorch, write atomically; returns the parity and
    the fused op counts."""
    fused = fuse_graph(load_onnx(onnx_path), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size)
    counts = fused_op_counts(fused)
    report = _save_checked(fused, out_path, parity_feed, reference, atol=atol, strict=True)
    log.info("fused %s: %s (parity max |diff| %.2e)", out_path, counts, report.max_abs_diff)
    return report, counts


def fuse_model(
    onnx_path: str | Path, out_path: str | Path, *, exported, model_config, atol: float = 1e-3
) -> tuple[ParityReport, dict[str, int]]:
    """Fuse an exported model; parity against PyTorch on the export's own parity batch."""
    return fuse(
        onnx_path,
        out_path,
        **fusion_info(model_config),
        parity_feed=exported.parity_feed,
        reference=exported.reference,
        atol=atol,
    )
