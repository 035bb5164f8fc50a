"""The validate stage: the teacher and every deployed artifact through their runtimes' runners on
the eval set; the report's ``models``, ``ratios`` and ``gate``; and the evaluator the
accuracy-aware search calls for each candidate graph.

Runners come from the runtime registry and are opened inside one ``ExitStack``, so a runner that
fails to open closes the ones opened before it.
"""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from modelpress.inference import Predictor
from modelpress.memory import release_weight_pages
from modelpress.runtimes.registry import create_runner
from modelpress.validate.compare import evaluate, file_size_mb, ratios
from modelpress.validate.gate import decide, worst
from modelpress.measures.latency import time_calls
from modelpress.validate.report import REPORT_SCHEMA
from modelpress.validate.select import Candidate, candidate_rows, choose, ratio_interval, timings_at
from modelpress.measures.uncertainty import interval
from modelpress.quantize.auto import Evaluation

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


#: a teacher with at least this many bytes of weights is measured and timed in its own phase, then closed and
#: its mapped weights handed back, before any graph opens: interleaved, the PyTorch weights, the fp32 graph's
#: and the quantized graph's would all be resident at once (issue #24: 3.3x the fp32 weights at 0.5 B)
TEACHER_APART_BYTES = 2**30


def weight_bytes(predictor: Predictor) -> int:
    """The bytes of an in-memory model's parameters (0 for a runner without one: a graph file's)."""
    parameters = getattr(getattr(predictor.runner, "model", None), "parameters", None)
    return sum(p.numel() * p.element_size() for p in parameters()) if callable(parameters) else 0


def _teacher_apart(task, teacher: Predictor, eval_set, cfg) -> tuple[dict[str, Any], dict[str, Any]]:
    """The teacher alone: its outputs and timings, then closed and its mapped weights paged out."""
    try:
        done = evaluate(task, teacher, [], eval_set, cfg)
    finally:
        teacher.runner.close()
    gc.collect()
    release_weight_pages()
    return done


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
    extra: Sequence[Opener] = (),
    setup: Any = None,
) -> dict[str, Any]:
    """The teacher and the candidates (the last one is gated) on ``eval_set``: the report's core.

    ``other_runtimes`` are the gated model on the bundle's other runtimes (``validate.runtimes``):
    measured like it and gated too. ``variants`` are the gated model's calibration-seed twins
    (``quantize.calibration_seeds``): measured for fidelity only. The gate judges the **worst** of
    all of them, so that neither a lucky calibration draw nor the kinder runtime passes it (the
    bundle ships the recipe's own seed).

    ``extra`` are more candidates for the bundle's default (fp32 and bf16 on other runtimes), timed
    beside the rest; ``setup`` (``validate.select.Setup``) names every candidate: each gets its
    accuracy verdict and interval, and :func:`validate.select.choose` picks the default (the
    report's ``selection``). The gate then judges the default: the int8 plan as above when it is
    chosen, else the chosen artifact; when only the ORT fp32 reference passed accuracy it stays
    the int8 plan's failing verdict (nothing the run pressed is good enough).

    A teacher of ``TEACHER_APART_BYTES`` or more runs alone first (outputs and timings), and is closed
    before any candidate opens (report ``teacher_timed_apart``)."""

    with contextlib.ExitStack() as stack:

        def opened(open_one: Opener) -> Predictor:
            predictor = open_one()
            stack.callback(predictor.runner.close)
            return predictor

        first = teacher()
        ref_name = first.name
        ref: Predictor | None = first
        done = None
        if weight_bytes(first) >= TEACHER_APART_BYTES:
            done = _teacher_apart(task, first, eval_set, cfg)
            ref = None
        else:
            stack.callback(first.runner.close)
        del first  # the apart teacher's runner goes with it
        cands = [opened(c) for c in candidates]
        others = [opened(o) for o in other_runtimes]
        more = [opened(e) for e in extra]
        twins = [opened(v) for v in variants]
        sizes = {
            c.name: file_size_mb(c.runner.model_path)  # type: ignore[attr-defined]  # the file runners' path
            for c in [*cands, *others, *more]
            if getattr(c.runner, "model_path", None) is not None and Path(c.runner.model_path).is_file()  # type: ignore[attr-defined]
        }
        models, outputs = evaluate(
            task,
            ref,
            [*cands, *others, *more, *twins],
            eval_set,
            cfg,
            sizes_mb=sizes,
            untimed=[t.name for t in twins],
            teacher_done=done,
        )
    shipped = cands[-1].name
    judged = [shipped, *(o.name for o in others), *(t.name for t in twins)]
    started = time.perf_counter()
    offered = [o.name for o in setup.offers] if setup is not None else []
    uncertainty: dict[str, dict[str, Any]] = {}
    for cand in dict.fromkeys([*judged, *offered]):
        uncertainty[cand] = {}
        for metric in models[cand]["metrics"]:
            units = task.paired_units(metric, outputs[ref_name], outputs[cand], eval_set)
            if units is not None:
                uncertainty[cand][metric] = interval(units).to_dict()
    bootstrap_seconds = round(time.perf_counter() - started, 2)
    table = {
        n: ratios(models, reference=ref_name, candidate=n, task=task)
        for n in models
        if n != ref_name and models[n]["latency"]
    }
    selection, speed = _select(task, models, uncertainty, gate_cfg, setup, ref_name, shipped)

    def verdict(cand: str, **latency: Any):
        return decide(
            task,
            models[ref_name]["metrics"],
            models[cand]["metrics"],
            max_drop=gate_cfg.max_drop,
            metric=gate_cfg.metric,
            candidate_name=cand,
            policy=gate_cfg.policy,
            intervals=uncertainty[cand],
            **latency,
        )

    gates = [verdict(cand, **speed) for cand in judged]
    gate = worst(gates)
    if selection is not None:
        chosen = selection["chosen"]
        if chosen not in judged and selection["passed"]:
            gate = verdict(chosen, **_speed_of(models, chosen, gate_cfg, setup, ref_name))
        gate = replace(gate, choice=selection["reason"])
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
        "teacher_timed_apart": done is not None,
    }
    if selection is not None:
        report["selection"] = selection
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


def _select(
    task, models, uncertainty, gate_cfg, setup, teacher: str, shipped: str
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the report's ``selection``, the gate's speed arguments for the int8 plan: the chosen one's
    when it is chosen, else the shipped model's); no selection without a setup or without the ORT
    fp32 reference measured (the single-stage validate)."""
    if setup is None or setup.reference not in models or not models[setup.reference]["latency"]:
        return None, {}
    candidates = []
    for offer in setup.offers:
        accuracy = decide(
            task,
            models[teacher]["metrics"],
            models[offer.name]["metrics"],
            max_drop=gate_cfg.max_drop,
            metric=gate_cfg.metric,
            candidate_name=offer.name,
            policy=gate_cfg.policy,
            intervals=uncertainty.get(offer.name),
        )
        candidates.append(
            Candidate(
                offer.name,
                offer.runtime,
                offer.precision,
                offer.file,
                models[offer.name]["size_mb"],
                accuracy.passed,
                accuracy.drop,
                accuracy.drop_ci95,
                dict(offer.options or {}),
            )
        )
    shape, timings, stat = timings_at(models, [c.name for c in candidates], setup.shape)
    choice = choose(
        candidates,
        timings,
        reference=setup.reference,
        max_latency_ratio=gate_cfg.max_latency_ratio if gate_cfg.max_latency_ratio is not None else float("inf"),
        shape=shape,
        stat=stat,
        target=setup.target,
    )
    chosen = next(c for c in candidates if c.name == choice.chosen)
    selection = {
        "shape": shape,
        "statistic": stat,
        "reference": setup.reference,
        "max_latency_ratio": gate_cfg.max_latency_ratio,
        "chosen": choice.chosen,
        "default": {"name": chosen.name, "runtime": chosen.runtime, "file": chosen.file, "options": chosen.options},
        "reason": choice.reason,
        "passed": choice.passed,
        "eligible": list(choice.eligible),
        "notes": list(setup.notes),
        "candidates": candidate_rows(candidates, models, choice, target=setup.target),
    }
    judged = choice.chosen if chosen.precision == "int8" else shipped
    return selection, _speed_of(models, judged, gate_cfg, setup, setup.reference, shape=shape)


def _speed_of(models, name: str, gate_cfg, setup, reference: str, *, shape: str | None = None) -> dict[str, Any]:
    """The gate's speed arguments for ``name``: its ratio to the reference, with its interval, at
    ``gate.latency_shape`` (default: the selection's shape)."""
    if gate_cfg.max_latency_ratio is None:
        return {}
    where, timings, stat = timings_at(models, [name, reference], gate_cfg.latency_shape or shape or setup.shape)
    r = ratio_interval(timings[name], timings[reference], stat=stat)
    key = f"{where}_p50"
    return {
        "latency": {key: r.value},
        "latency_ci95": {key: r.ci95},
        "latency_shape": where,
        "max_latency_ratio": gate_cfg.max_latency_ratio,
        "latency_reference": reference,
    }


def candidate_evaluator(*, task, teacher: Opener, encoder, eval_set, cfg, gate_cfg):
    """For ``quantize.mode = "auto"``: ONNX path → Evaluation (the gate's metric, through ONNX Runtime).
    The teacher runs once, here."""

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
