"""Int8 only where it pays (``select.int8_classes = "auto"``): per op class, is the int8 graph faster with it?

Runs after the quantize stage, on ONNX Runtime's int8 graph (``model.int8.onnx``, the plan's own
output; the runtimes' artifacts are written from the plan after it). The op classes are the
projections (constant-weight MatMul/Gemm), the attention-score MatMuls (int8 Q·Kᵀ, in Q/DQ graphs)
and Conv. When the target is this machine each class present is timed: the graph with it and the
graph with it in fp32, interleaved, at one shape (the largest timed batch × length), a few rounds;
a class stays int8 only at ≥ :data:`PAYS_AT` × (the speed-up NVIDIA ModelOpt's autotune keeps a Q/DQ
pair for). For a declared target the graph cannot be timed: :data:`RULES`, figures measured on each
CPU level (README, issue #23), decide, and the report says so. Classes the rules do not cover stay int8.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from modelpress.quantize.static import write_quantized
from modelpress.runtimes.registry import create_runner

log = logging.getLogger(__name__)

PAYS_AT = 1.02
PROJECTION, ATTENTION_SCORES, CONV = "projection", "attention-scores", "conv"
#: timed rounds per graph (after one warm-up round): cheap, one shape
ROUNDS = 5

#: (CPU level, runtime) → class → (int8 pays, the figure that says so); levels without a row borrow
#: :data:`SAME_AS`'s
RULES: dict[tuple[str, str], dict[str, tuple[bool, str]]] = {
    ("x86-64-v3", "onnxruntime"): {
        PROJECTION: (True, "MiniLM int8 1.24x ORT fp32's throughput at b32x128 (AVX2, EPYC Zen 2)"),
        CONV: (False, "ResNet int8 2.16x ORT fp32's time at b32 (AVX2, EPYC Zen 2)"),
    },
    ("x86-64-v3", "openvino"): {
        PROJECTION: (False, "int8 FullyConnected ~1.8x f32's time: MiniLM b32 1,269 vs 704.5 ms (AVX2)"),
        CONV: (True, "ResNet int8 (NNCF) 0.493x ORT fp32's time at b32 (AVX2)"),
    },
    ("avx512-vnni", "onnxruntime"): {
        PROJECTION: (True, "MiniLM int8 2.6x PyTorch fp32's throughput at b32 (AVX512-VNNI, Zen 4)"),
    },
    ("avx512-vnni", "openvino"): {
        PROJECTION: (True, "MiniLM int8 (NNCF) 2.1x faster than ORT int8 at b32 (AVX512-VNNI)"),
        ATTENTION_SCORES: (True, "MiniLM IR with int8 Q·Kᵀ 0.915x the IR without at b32 (AVX512-VNNI)"),
    },
}
SAME_AS = {"x86-64-v4": "x86-64-v3", "amx": "avx512-vnni"}


@dataclass(frozen=True)
class ClassDecision:
    op_class: str
    nodes: int  # int8 nodes of the class in the plan
    int8: bool  # kept int8
    how: str  # "measured" | "rule" | "no rule"
    with_ms: float | None = None  # the graph's p50 with the class int8
    without_ms: float | None = None  # ... with the class fp32
    speedup: float | None = None  # without ÷ with
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def op_classes(plan: Any) -> dict[str, tuple[str, ...]]:
    """The plan's int8 nodes by class (attention scores: the cfg's flag, no nodes of their own)."""
    out: dict[str, tuple[str, ...]] = {}
    projections = tuple(t.node_name for t in plan.targets if t.op_type in ("MatMul", "Gemm"))
    convs = tuple(t.node_name for t in plan.targets if t.op_type == "Conv")
    if projections:
        out[PROJECTION] = projections
    if plan.cfg.int8_attention_scores and plan.cfg.graph_format == "qdq":
        out[ATTENTION_SCORES] = ()
    if convs:
        out[CONV] = convs
    return out


def by_rule(target: Any, runtime: str, classes: dict[str, tuple[str, ...]]) -> list[ClassDecision]:
    level = SAME_AS.get(target.name, target.name)
    rules = RULES.get((level, runtime), {})
    decisions = []
    for name, nodes in classes.items():
        if name in rules:
            pays, figure = rules[name]
            why = f"rule for {level} on {runtime}: {figure}"
            decisions.append(ClassDecision(name, len(nodes), pays, "rule", why=why))
        else:
            decisions.append(ClassDecision(name, len(nodes), True, "no rule", why=f"no measured rule for {level}"))
    return decisions


def keep_paying_classes(quant: Any, int8_path: Path, *, target: Any, batch: Any, threads: int) -> list[ClassDecision]:
    """Decide each op class of ``quant``'s plan for ONNX Runtime's graph (measured on this machine,
    else by rule), rewrite ``int8_path`` with the classes that do not pay in fp32, and update
    ``quant.plan`` and ``quant.summary`` (the other runtimes' artifacts start from them; OpenVINO's
    IR then applies its own rules: ``OpenVINOArtifact.write``)."""

    plan = quant.plan
    classes = op_classes(plan) if plan is not None else {}  # weight-only: no activation plan, no classes
    if not classes:
        return []
    keep = tuple(quant.summary.fp32_nodes)
    if target.detected:
        decisions = [_measure(plan, keep, name, nodes, int8_path, batch, threads) for name, nodes in classes.items()]
    else:
        decisions = by_rule(target, "onnxruntime", classes)
    dropped = [d.op_class for d in decisions if not d.int8]
    if dropped:
        plan, keep = _without(plan, keep, dropped, classes)
        quant.plan = plan
        quant.summary = write_quantized(plan, int8_path, keep_fp32=keep)
        log.info("int8 does not pay for %s here: kept fp32", ", ".join(dropped))
    return decisions


def classes_without(plan: Any, keep: tuple[str, ...], dropped: Sequence[str]) -> tuple[Any, tuple[str, ...]]:
    """The plan and its fp32 nodes with the op classes ``dropped`` in fp32 (a runtime's artifact)."""
    return _without(plan, keep, dropped, op_classes(plan))


def _without(plan: Any, keep: tuple[str, ...], dropped: Sequence[str], classes: dict) -> tuple[Any, tuple[str, ...]]:
    """The plan and its fp32 nodes with the ``dropped`` classes in fp32."""
    if ATTENTION_SCORES in dropped:
        plan = replace(plan, cfg=plan.cfg.with_(attention_scores=False))
    return plan, (*keep, *(n for c in dropped for n in classes[c]))


def _measure(plan, keep, name, nodes, int8_path: Path, batch, threads: int) -> ClassDecision:

    variant_plan, variant_keep = _without(plan, keep, [name], {name: nodes})
    with tempfile.TemporaryDirectory(prefix=".int8-classes-", dir=int8_path.parent) as work:
        variant = Path(work) / f"without-{name}.onnx"
        write_quantized(variant_plan, variant, keep_fp32=variant_keep)
        runners = [create_runner("onnxruntime", p, threads=threads, name=p.name) for p in (int8_path, variant)]
        for r in runners:
            r.__enter__()
        try:
            times = _interleaved([lambda r=r: r.run(batch.feed) for r in runners])
        finally:
            for r in runners:
                r.close()
    with_ms, without_ms = (1e3 * float(np.median(t)) for t in times)
    speedup = round(without_ms / with_ms, 3)
    pays = speedup >= PAYS_AT
    why = (
        f"measured: {with_ms:.2f} ms with int8 {name}, {without_ms:.2f} ms without "
        f"({speedup:.3f}x; int8 kept at ≥ {PAYS_AT})"
    )
    return ClassDecision(name, len(nodes), pays, "measured", round(with_ms, 3), round(without_ms, 3), speedup, why)


def _interleaved(calls: Sequence[Any]) -> list[list[float]]:

    times: list[list[float]] = [[] for _ in calls]
    for r in range(ROUNDS + 1):
        for k, call in enumerate(calls):
            t0 = time.perf_counter()
            call()
            if r:
                times[k].append(time.perf_counter() - t0)
    return times
