"""Static int8 quantization of an exported ONNX model for ONNX Runtime (and TensorRT's preset).

Pipeline: find constant-weight MatMul/Gemm targets → (optional) SmoothQuant, from per-channel
activation maxima over real tokens → calibrate the inputs of the targets (minmax / percentile /
entropy, bounded memory), and with ``quantize.attention_scores`` the Q and K projection outputs of
each attention-score MatMul in the same pass → write Q/DQ, or for the ``ort`` format ONNX Runtime's
int8 ops on its fused graph when there is one (``modelpress.quantize.fused``) → save atomically.
Returns a summary for the report.
"""

from __future__ import annotations


import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx
import psutil
from onnx import numpy_helper

from modelpress.errors import BadInputError
from modelpress.fileio import maps_weights, load_onnx, save_onnx
from modelpress.export.names import matches, module_names
from modelpress.quantize.calibrate import collect_stats
from modelpress.quantize.config import QuantizeConfig
from modelpress.quantize.fused import FusedPlan, carry_over
from modelpress.quantize.offload import DiskWeights
from modelpress.quantize.ort_ops import insert_ort_int8, ort_gemm
from modelpress.quantize.qdq import activation_params, insert_eltwise_qdq, insert_qdq, insert_score_qdq
from modelpress.quantize.smoothquant import apply_smoothing
from modelpress.quantize.stats import TensorRange
from modelpress.quantize.tied import share_with_int8_head, tied_tables
from modelpress.quantize.targets import (
    EltwiseInput,
    QuantTarget,
    ScoreMatMul,
    find_attention_scores,
    find_eltwise_inputs,
    find_targets,
    fold_weight_transposes,
)
from modelpress.export.fusion import fuse_exported

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorCalibration:
    tensor: str
    lo: float
    hi: float
    observed_min: float
    observed_max: float
    clipped: float
    scale: float
    zero_point: int


@dataclass(frozen=True)
class AttentionScoresSummary:
    """The attention-score op class: int8 Q·Kᵀ through symmetric int8 Q/DQ (zero point 0, one scale
    per tensor) on the Q and K projection outputs, in the Q/DQ graphs written from the plan (present
    when ``quantize.attention_scores`` is on for the target)."""

    in_this_graph: bool  # False for the "ort" format (ONNX Runtime's attention stays fp32)
    matmuls: tuple[str, ...]  # the Q·Kᵀ MatMul nodes
    tensors: tuple[TensorCalibration, ...]  # the Q and K projection outputs and their int8 ranges


@dataclass(frozen=True)
class LayerQuant:
    """One MatMul of a data-aware weight-only graph (``quantize.int4_method``, ``int8_budget``): its
    bits and method, and its relative output error ‖x·W − x·Ŵ‖² / ‖x·W‖² on calibration rows."""

    node: str
    bits: int  # 4, or 8 where the int8 budget kept it
    method: str  # "awq" | "gptq" | "rtn" (the int8 layers are round-to-nearest)
    error: float  # of the weight written
    error_rtn: float  # of int4 round-to-nearest: what the method improves on
    error_int8: float  # of int8: what keeping it 8-bit would leave
    alpha: float | None = None  # AWQ's scale exponent (s = mean|x|^alpha); 0: no scaling


@dataclass(frozen=True)
class QuantizeSummary:
    preset: str
    format: str  # "qdq" | "ort"
    calibration_method: str
    smoothquant: bool
    weight_bits: int  # 8 (±127) or 7 (±63, reduce_range: CPUs whose int8 GEMM saturates)
    quantized_nodes: tuple[str, ...]
    fp32_nodes: tuple[str, ...]  # MatMul/Gemm nodes left in fp32 (excluded or not eligible)
    tensors: tuple[TensorCalibration, ...]
    calibration_seconds: float
    peak_rss_mb: float
    block_size: int | None = None  # weight-only (MatMulNBits): input rows per weight scale
    accuracy_level: int | None = None  # weight-only: MatMulNBits' compute (0/1 fp32, 4 int8)
    attention_scores: AttentionScoresSummary | None = None
    #: weight-only: embedding lookups that read the tied LM head's quantized weight (GatherBlockQuantized)
    shared_embeddings: tuple[str, ...] = ()
    #: weight-only int4: how the integers were chosen ("rtn" | "awq" | "gptq"), and per MatMul what it got
    int4_method: str | None = None
    layers: tuple[LayerQuant, ...] = ()
    #: weight-only int4: the MatMuls written 8-bit (``head_bits = 8``'s output layer, ``int8_budget``'s picks)
    eight_bit_nodes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


class _PeakRss:
    """Peak resident memory of this process, sampled around the calibration steps."""

    def __init__(self) -> None:
        self._proc = psutil.Process(os.getpid())
        self.peak = self._proc.memory_info().rss

    def sample(self) -> None:
        self.peak = max(self.peak, self._proc.memory_info().rss)


@dataclass
class QuantPlan:
    """Everything decided by calibration, before any Q/DQ is written: the (smoothed) fp32 model,
    the target nodes, and each activation's calibrated range. Writing a variant that keeps some
    nodes fp32 (accuracy-aware search) reuses a plan without calibrating again."""

    model: onnx.ModelProto
    targets: list[QuantTarget]
    ranges: dict[str, TensorRange]
    observed: dict[str, tuple[float, float]]
    all_matmuls: list[str]
    cfg: QuantizeConfig
    seconds: float
    peak_rss_bytes: int
    fused: FusedPlan | None = None  # the same calibration on ORT's fused graph (the ``ort`` format's base)
    #: Q·Kᵀ MatMuls and the symmetric ranges of their Q/K projection outputs (cfg.int8_attention_scores)
    scores: list[ScoreMatMul] = field(default_factory=list)
    score_ranges: dict[str, TensorRange] = field(default_factory=dict)
    #: a convolutional network's residual Add and pooling inputs, quantized in the Q/DQ form OpenVINO
    #: reads (``write_quantized(eltwise=True)``), and their ranges
    eltwise: list[EltwiseInput] = field(default_factory=list)
    eltwise_ranges: dict[str, TensorRange] = field(default_factory=dict)
    #: where ``model``'s weights are (it is offloaded: ``offload``); they live until :meth:`close`
    weights: DiskWeights | None = None
    #: tied embedding lookups {Gather output: head MatMul} (``tied.tied_tables``): written to read the head's weight
    tied: dict[str, str] = field(default_factory=dict)
    #: SmoothQuant's factors, keyed by the smoothed activation (its producer's output divided by them)
    smoothing: dict[str, np.ndarray] = field(default_factory=dict)

    def activation_quant(self, activation: str):
        return activation_params(self.ranges[activation], symmetric=self.cfg.activation_symmetric)

    def weight(self, name: str) -> np.ndarray:
        """The value of one of ``model``'s initializers."""
        tensor = next(i for i in self.model.graph.initializer if i.name == name)
        return self.weights.array(tensor) if self.weights is not None else numpy_helper.to_array(tensor)

    def close(self) -> None:
        """Remove the weights' work folder: nothing can be written from this plan after."""
        if self.weights is not None:
            self.weights.close()


def plan_quantization(
    model_path: str | Path, feeds: Iterable[Mapping[str, np.ndarray]], cfg: QuantizeConfig
) -> QuantPlan:
    """Find targets, smooth (optional) and calibrate: the expensive, data-dependent part. For the
    ``ort`` format (``quantize.fuse``) the same calibration is carried over to ORT's fused graph."""
    start = time.perf_counter()
    rss = _PeakRss()
    model = load_onnx(model_path)
    excluded = excluded_nodes(model, cfg.nodes_to_exclude, source=model_path)
    model = fold_weight_transposes(model, keep=excluded)
    # the fp32 weights on disk from here: calibration's sessions read them there, SmoothQuant writes
    # its rescaled ones there, and the writers read each as they quantize it (0.5 B W8A8 passed 15 GB)
    weights = DiskWeights.beside(Path(model_path), ".int8-weights-")
    model = weights.offload(model)  # rebound: the in-memory weights are freed
    tied = tied_tables(model, read=weights.view)  # before SmoothQuant rescales the head's weight
    all_matmuls = [n.name for n in model.graph.node if n.op_type in cfg.op_types]
    targets = find_targets(model, op_types=cfg.op_types, exclude=excluded)
    if not targets:
        raise BadInputError(f"{model_path}: no {'/'.join(cfg.op_types)} node with a constant weight to quantize")

    factors: dict[str, np.ndarray] = {}
    method = cfg.calibration_method
    needs_hist = method != "minmax"
    acts = [t.activation for t in targets]
    scores = find_attention_scores(model) if cfg.int8_attention_scores else []
    score_tensors = list(dict.fromkeys(t for s in scores for t in (s.query, s.key)))
    eltwise = find_eltwise_inputs(model, targets)
    eltwise_tensors = list(dict.fromkeys(e.tensor for e in eltwise))
    stats = collect_stats(
        model,
        acts + score_tensors + eltwise_tensors,
        feeds,
        histogram=needs_hist and not cfg.smoothquant,
        num_bins=cfg.num_bins,
        exclude_padding=cfg.exclude_padding,
        desc="calibrating (pass 1)",
        weights_dir=weights.folder,
    )
    score_stats = {t: stats[t] for t in score_tensors}
    eltwise_stats = {t: stats[t] for t in eltwise_tensors}
    rss.sample()
    if cfg.smoothquant:
        # Conv inputs are not smoothed (their statistics are not per input channel: NCHW)
        conv_acts = {t.activation for t in targets if t.op_type == "Conv"}
        model, targets, factors = apply_smoothing(
            model,
            targets,
            {a: s.channel_absmax() for a, s in stats.items() if a not in conv_acts},
            cfg.smoothquant_alpha,
            weights=weights,
        )
        if needs_hist:
            stats = collect_stats(
                model,
                [t.activation for t in targets] + score_tensors + eltwise_tensors,
                feeds,
                histogram=True,
                num_bins=cfg.num_bins,
                exclude_padding=cfg.exclude_padding,
                desc="calibrating (pass 2)",
                weights_dir=weights.folder,
            )
            score_stats = {t: stats[t] for t in score_tensors}
            eltwise_stats = {t: stats[t] for t in eltwise_tensors}
            rss.sample()
        else:
            stats = _rescaled_minmax(stats, targets, factors)  # type: ignore[assignment]  # min/max: the same use
    ranges: dict[str, TensorRange] = {}
    observed: dict[str, tuple[float, float]] = {}
    for t in targets:
        if t.activation in ranges:
            continue
        s = stats[t.activation]
        if isinstance(s, TensorRange):  # exact min/max of the smoothed tensor
            observed[t.activation] = (s.lo, s.hi)
            ranges[t.activation] = s.symmetric() if cfg.activation_symmetric else s
        else:
            ranges[t.activation] = s.range(method, percentile=cfg.percentile, symmetric=cfg.activation_symmetric)
            observed[t.activation] = (s.min, s.max)
    # minmax: pass 1's statistics hold (SmoothQuant rescales the projections' inputs and weights, not their outputs)
    score_ranges = {
        name: st.range(method, percentile=cfg.percentile, symmetric=True) for name, st in score_stats.items()
    }
    observed.update({name: (st.min, st.max) for name, st in score_stats.items()})
    # as an activation's (a Conv input's: the same range, and the writer shares its pair)
    eltwise_ranges = {}
    for name, st in eltwise_stats.items():
        eltwise_ranges[name] = st.range(method, percentile=cfg.percentile, symmetric=cfg.activation_symmetric)
        observed[name] = (st.min, st.max)
    if scores:  # the same sites on the smoothed graph (its readers are the nodes a Q/DQ goes before)
        scores = [sc for sc in find_attention_scores(model) if {sc.query, sc.key} <= score_ranges.keys()]
    rss.sample()
    fused = None
    if cfg.graph_format == "ort" and cfg.fuse:
        fused = _fused_plan(model_path, feeds, targets, ranges, factors, cfg)
    return QuantPlan(
        model,
        targets,
        ranges,
        observed,
        all_matmuls,
        cfg,
        time.perf_counter() - start,
        rss.peak,
        fused,
        scores,
        score_ranges,
        eltwise,
        eltwise_ranges,
        weights,
        tied,
        factors,
    )


def _fused_plan(model_path, feeds, targets, ranges, factors, cfg: QuantizeConfig) -> FusedPlan | None:
    """ORT's fused form of the model (when the export wrote it fusable), under this calibration."""

    fused = fuse_exported(model_path, next(iter(feeds)))
    return None if fused is None else carry_over(fused, targets, ranges, factors, cfg.op_types)


def excluded_nodes(model: onnx.ModelProto, names: tuple[str, ...], *, source: object = "") -> tuple[str, ...]:
    """The ONNX nodes ``quantize.nodes_to_exclude`` names: each entry is an ONNX node name or a
    module path (``encoder.layer.3.output.dense``; ``encoder.layer.3`` covers the whole layer)."""
    modules = module_names(model)
    nodes = {n.name for n in model.graph.node}
    out, unknown = [], []
    for name in names:
        hits = [name] if name in nodes else [n for n, m in modules.items() if matches(m, name)]
        (out.extend(hits) if hits else unknown.append(name))
    if unknown:
        raise BadInputError(f"quantize.nodes_to_exclude: no node or module named {', '.join(unknown)} in {source}")
    return tuple(dict.fromkeys(out))


def for_tensorrt(plan: QuantPlan) -> QuantPlan:
    """The same calibration as TensorRT reads it: symmetric int8 activations (±max|range|), Q/DQ.
    Attention scores stay fp32: TensorRT's int8 MHA fusion wants V and the softmax quantized too."""
    return replace(
        plan,
        ranges={a: r.symmetric() for a, r in plan.ranges.items()},
        cfg=plan.cfg.with_(
            preset="tensorrt", format="qdq", symmetric_activations=None, reduce_range=False, attention_scores=False
        ),
        scores=[],
        score_ranges={},
        tied={},  # TensorRT reads int8 tensors only through Q/DQ: a lookup on the int8 head is not one
    )


def write_quantized(
    plan: QuantPlan, out_path: str | Path, *, keep_fp32: tuple[str, ...] = (), eltwise: bool = False
) -> QuantizeSummary:
    """Write the Q/DQ model of a plan, leaving the nodes named in ``keep_fp32`` unquantized.
    ``eltwise`` (the Q/DQ form OpenVINO reads): with int8 Convs, the plan's residual Add and pooling
    inputs are quantized too."""
    cfg = plan.cfg
    targets = [t for t in plan.targets if t.node_name not in keep_fp32]
    if cfg.graph_format == "ort":
        base, ort_targets = plan.model, targets
        if plan.fused is not None:
            base, ort_targets = plan.fused.model, plan.fused.targets_without(keep_fp32)
            int8 = {m for t in ort_targets for m in plan.fused.members[t.node_name]}
            targets = [t for t in targets if t.node_name in int8]  # a projection of an fp32 Attention is fp32
        # Conv nodes keep the Q/DQ form (the fastest int8 Conv form measured here:
        # bench/conv_forms.py), and so does every MatMul reading an activation one of them reads,
        # since an activation is quantized once. Gemm nodes (GPT-2's Conv1D exports as addmm → Gemm)
        # become MatMulIntegerToFloat: left in Q/DQ, ONNX Runtime fused none of the GPT's into
        # QGemm and dequantized every weight on every call (a decode step 13× slower than fp32)
        inits = {i.name: i for i in base.graph.initializer}
        nodes = {n.name: n for n in base.graph.node}
        qdq_acts = {
            t.activation
            for t in ort_targets
            if t.op_type == "Conv" or (t.op_type == "Gemm" and not ort_gemm(inits, nodes[t.node_name]))
        }
        matmuls = [t for t in ort_targets if t.activation not in qdq_acts]
        on_disk = plan.weights if base is plan.model else None  # the fused graph is in memory
        qmodel = insert_ort_int8(
            base, matmuls, plan.ranges, per_channel=cfg.per_channel, weight_qmax=cfg.weight_qmax, weights=on_disk
        )
        rest = [t for t in ort_targets if t.activation in qdq_acts]
        if rest:
            qmodel = insert_qdq(
                qmodel,
                rest,
                plan.ranges,
                symmetric_activations=False,
                per_channel=cfg.per_channel,
                weight_qmax=cfg.weight_qmax,
                weights=on_disk,
            )
    else:
        qmodel = insert_qdq(
            plan.model,
            targets,
            plan.ranges,
            symmetric_activations=cfg.activation_symmetric,
            per_channel=cfg.per_channel,
            weight_qmax=cfg.weight_qmax,
            weights=plan.weights,
        )
        if plan.scores:
            qmodel = insert_score_qdq(qmodel, plan.scores, plan.score_ranges, weights=plan.weights)
        if eltwise and plan.eltwise and any(t.op_type == "Conv" for t in targets):
            qmodel = insert_eltwise_qdq(
                qmodel, plan.eltwise, plan.eltwise_ranges, symmetric=cfg.activation_symmetric, weights=plan.weights
            )
    shared = share_with_int8_head(qmodel, plan.tied, _unsmoothing(plan)) if plan.tied else []
    if shared:
        log.info("tied embedding %s reads the LM head's weight", ", ".join(shared))
    if plan.weights is not None:
        plan.weights.reload(qmodel)  # what the int8 graph still reads of the fp32 weights
    save_onnx(qmodel, Path(out_path), external_data=maps_weights(qmodel))
    scores = _scores_summary(plan)
    int8_scores = set(scores.matmuls) if scores is not None and scores.in_this_graph else set()
    quantized = tuple(t.node_name for t in targets)
    tensors = []
    for act in dict.fromkeys(t.activation for t in targets):
        rng = plan.ranges[act]
        p = plan.activation_quant(act)
        tensors.append(
            TensorCalibration(
                act, rng.lo, rng.hi, plan.observed[act][0], plan.observed[act][1], rng.clipped, p.scale, p.zero_point
            )
        )
    return QuantizeSummary(
        preset=cfg.preset,
        format=cfg.graph_format,
        calibration_method=cfg.calibration_method,
        smoothquant=cfg.smoothquant,
        weight_bits=8 if cfg.weight_qmax == 127 else 7,
        quantized_nodes=quantized,
        fp32_nodes=tuple(n for n in plan.all_matmuls if n not in quantized and n not in int8_scores),
        tensors=tuple(tensors),
        calibration_seconds=round(plan.seconds, 2),
        peak_rss_mb=round(plan.peak_rss_bytes / 2**20, 1),
        attention_scores=scores,
        shared_embeddings=tuple(shared),
    )


def _unsmoothing(plan: QuantPlan) -> dict[str, np.ndarray]:
    """{tied head: 1/f} for each tied head whose input SmoothQuant divided by f (its weight is diag(f)·Eᵀ)."""
    targets = {t.node_name: t for t in plan.targets}
    return {
        head: (1.0 / plan.smoothing[targets[head].activation]).astype(np.float32)
        for head in plan.tied.values()
        if head in targets and targets[head].activation in plan.smoothing
    }


def _scores_summary(plan: QuantPlan) -> AttentionScoresSummary | None:
    """What the attention-score op class did (None: the setting is off for this target; no MatMul
    listed: the graph has no Q·Kᵀ it recognises). Q·Kᵀ MatMuls are never in ``quantized_nodes``:
    ``keep_fp32`` (the accuracy search, the OpenVINO IR) names weight targets; the setting alone
    decides these."""
    if not plan.cfg.int8_attention_scores:
        return None
    tensors = []
    for name in dict.fromkeys(t for s in plan.scores for t in (s.query, s.key)):
        rng = plan.score_ranges[name]
        p = activation_params(rng, symmetric=True)
        tensors.append(
            TensorCalibration(
                name, rng.lo, rng.hi, plan.observed[name][0], plan.observed[name][1], rng.clipped, p.scale, p.zero_point
            )
        )
    return AttentionScoresSummary(
        in_this_graph=plan.cfg.graph_format == "qdq",
        matmuls=tuple(s.node_name for s in plan.scores),
        tensors=tuple(tensors),
    )


def quantize_static(
    model_path: str | Path, out_path: str | Path, feeds: Iterable[Mapping[str, np.ndarray]], cfg: QuantizeConfig
) -> QuantizeSummary:
    """Write the int8 Q/DQ model to ``out_path`` (atomically) and return what was done."""
    return write_quantized(plan_quantization(model_path, feeds, cfg), out_path)


def _rescaled_minmax(stats, targets: list[QuantTarget], factors: dict[str, np.ndarray]) -> dict[str, TensorRange]:
    """Min/max of the smoothed activations X/s, exactly, from the per-channel min/max of X."""
    out = {}
    for t in targets:
        s = factors.get(t.activation)
        orig = t.activation[: -len("_smoothed")] if s is not None else t.activation
        st = stats[orig]
        if s is None:
            out[t.activation] = TensorRange(st.min, st.max, 0.0)
        else:
            out[t.activation] = TensorRange(float((st.ch_min / s).min()), float((st.ch_max / s).max()), 0.0)
    return out
