"""The validate stage: the teacher and every deployed artifact through their runtimes' runners on
the eval set; the report's ``models``, ``ratios`` and ``gate``; and the evaluator the
accuracy-aware search calls for each candidate graph.

Runners come from the runtime registry and are opened inside one ``ExitStack``, so a runner that
fails to open closes the ones opened before it.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from modelpress.inference import Predictor
from modelpress.runtimes.registry import create_runner
from modelpress.validate.compare import evaluate, file_size_mb, ratios
from modelpress.validate.gate import decide, worst
from modelpress.validate.latency import time_calls
from modelpress.validate.report import REPORT_SCHEMA

#: opens (creates and enters) one predictor; validation calls it inside its ExitStack
Opener = Callable[[], Predictor]


def open_predictor(
    runtime: str, source: Any, *, task, encoder, threads: int = 0, name: str, **runner_options: Any
) -> Predictor:
    """A predictor whose runner (from the runtime registry) is entered."""
    options: dict[str, Any] = {"threads": threads, "name": name, **runner_options}
    if runtime == "torch":
        options.update(input_names=encoder.input_names, task=task)
    runner = create_runner(runtime, source, **options)
    runner.__enter__()
    return Predictor(runner, task, encoder, name=name, runtime=runtime)


def teacher_opener(model, *, task, encoder, threads: int, name: str = "teacher") -> Opener:
    return lambda: open_predictor("torch", model, task=task, encoder=encoder, threads=threads, name=name)


def file_opener(
    path: Path, *, task, encoder, threads: int, name: str, runtime: str = "onnxruntime", **runner_options: Any
) -> Opener:
    return lambda: open_predictor(
        runtime, path, task=task, encoder=encoder, threads=threads, name=name, **runner_options
    )


def validate_stage(
    *,
    task,
    cfg,
    gate_cfg,
    teacher: Opener,
    candidates: Sequence[Opener],
    eval_set,
    name: str,
    variants: Sequence[Opener] = (),
    other_runtimes: Sequence[Opener] = (),
) -> dict[str, Any]:
    """The teacher and the candidates (the last one is gated) on ``eval_set``: the report's core.

    ``other_runtimes`` are the gated model on the bundle's other runtimes (``validate.runtimes``):
    measured like it and gated too. ``variants`` are the gated model's calibration-seed twins
    (``quantize.calibration_seeds``): measured for fidelity only. The gate judges the **worst** of
    all of them, so that neither a lucky calibration draw nor the kinder runtime passes it (the
    bundle ships the recipe's own seed)."""
    from modelpress.validate.uncertainty import interval

    with contextlib.ExitStack() as stack:

        def opened(open_one: Opener) -> Predictor:
            predictor = open_one()
            stack.callback(predictor.runner.close)
            return predictor

        ref = opened(teacher)
        cands = [opened(c) for c in candidates]
        others = [opened(o) for o in other_runtimes]
        twins = [opened(v) for v in variants]
        sizes = {
            c.name: file_size_mb(c.runner.model_path)
            for c in [*cands, *others]
            if getattr(c.runner, "model_path", None) is not None and Path(c.runner.model_path).is_file()
        }
        models, outputs = evaluate(
            task, ref, [*cands, *others, *twins], eval_set, cfg, sizes_mb=sizes, untimed=[t.name for t in twins]
        )
    shipped = cands[-1].name
    judged = [shipped, *(o.name for o in others), *(t.name for t in twins)]
    started = time.perf_counter()
    uncertainty = {}
    for cand in judged:
        uncertainty[cand] = {}
        for metric in models[cand]["metrics"]:
            units = task.paired_units(metric, outputs[ref.name], outputs[cand], eval_set)
            if units is not None:
                uncertainty[cand][metric] = interval(units).to_dict()
    bootstrap_seconds = round(time.perf_counter() - started, 2)
    table = {
        n: ratios(models, reference=ref.name, candidate=n, task=task)
        for n in models
        if n != ref.name and models[n]["latency"]
    }
    gates = [
        decide(
            task,
            models[ref.name]["metrics"],
            models[cand]["metrics"],
            max_drop=gate_cfg.max_drop,
            metric=gate_cfg.metric,
            candidate_name=cand,
            policy=gate_cfg.policy,
            intervals=uncertainty[cand],
            latency=table.get(cand) or table.get(shipped),
            max_latency_ratio=gate_cfg.max_latency_ratio,
            latency_shape=gate_cfg.latency_shape or None,
        )
        for cand in judged
    ]
    gate = worst(gates)
    report = {
        "schema": REPORT_SCHEMA,
        "name": name,
        "task": task.name,
        "task_config": task.describe(),
        "eval": task.describe_eval(eval_set),
        "models": models,
        "ratios": table,
        "uncertainty": uncertainty,
        "uncertainty_seconds": bootstrap_seconds,
        "gate": gate.to_dict(),
        "runtimes": {p.runtime: p.name for p in [cands[-1], *others]},
    }
    if twins:
        report["calibration_seeds"] = {
            "shipped": shipped,
            "judged": gate.candidate_name,
            "candidates": [
                {
                    "name": g.candidate_name,
                    "metric": g.metric,
                    "value": g.candidate,
                    "drop": g.drop,
                    "drop_ci95": list(g.drop_ci95) if g.drop_ci95 else None,
                }
                for g in gates
            ],
            "spread": round(max(g.candidate for g in gates) - min(g.candidate for g in gates), 4),
        }
    return report


def candidate_evaluator(*, task, teacher: Opener, encoder, eval_set, cfg, gate_cfg):
    """For ``quantize.mode = "auto"``: ONNX path → Evaluation (the gate's metric, through ONNX Runtime).
    The teacher runs once, here."""
    from modelpress.runtimes.quantize.auto import Evaluation

    examples = list(eval_set.examples)
    ref = teacher()
    try:
        teacher_out = task.eval_outputs(ref, eval_set, cfg)
    finally:
        ref.runner.close()
    teacher_metrics = task.reference_metrics(teacher_out, eval_set)
    shape_batch = [examples[i % len(examples)] for i in range(max(cfg.batch_sizes))]

    def evaluate_candidate(path: Path) -> Evaluation:
        pred = open_predictor("onnxruntime", path, task=task, encoder=encoder, threads=cfg.threads, name="candidate")
        try:
            metrics = task.fidelity(teacher_out, task.eval_outputs(pred, eval_set, cfg), eval_set)
            gate = decide(task, teacher_metrics, metrics, max_drop=gate_cfg.max_drop, metric=gate_cfg.metric)
            batch = pred.encode(shape_batch, pad_to=max(cfg.seq_lengths))
            times = time_calls(lambda: pred.predict_batch(batch), runs=5, warmup=1)
        finally:
            pred.runner.close()
        return Evaluation(gate.candidate, gate.drop, gate.passed, 1e3 * float(np.median(times)))

    return evaluate_candidate
