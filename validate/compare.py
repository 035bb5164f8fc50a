"""Validation: run the teacher and each candidate predictor on the eval set; metrics and latency.

Takes predictors (encoder → runner → task post-processing), never a backend. Produces the
``models`` part of report.json: per model, its fidelity metrics vs the teacher (the task's), its
latency per (batch, shape), its real-workload throughput, file size and peak memory growth.
Latency is measured **interleaved**: every timed round runs each model once, in turn, so noise
from the machine (another process, a frequency change) lands on all of them alike instead of on
whichever model happened to be timed at that moment; the report keeps each model's spread.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

import numpy as np

from modelpress.measures.latency import PeakRss, interleaved_rounds, summarize
from modelpress.validate.select import slowed

log = logging.getLogger(__name__)


def _shapes(examples: Sequence[Any], cfg, encoder) -> list[tuple[int, int | None, list[Any]]]:
    lengths = encoder.timing_lengths(cfg.seq_lengths)
    return [(b, s, [examples[i % len(examples)] for i in range(b)]) for b in cfg.batch_sizes for s in lengths]


def interleaved_latency(predictors: Sequence, examples: Sequence[Any], cfg) -> dict[str, list[dict[str, Any]]]:
    """Per predictor, its latency rows: at each (batch, padded length), ``warmup_runs`` untimed
    rounds, then up to ``latency_runs`` rounds that each time every predictor once, in turn.
    ``latency_budget_s`` bounds the timed rounds of one shape (never fewer than
    ``MIN_TIMED_ROUNDS``), so a slow machine or a big batch costs minutes, not an hour."""
    rows: dict[str, list[dict[str, Any]]] = {p.name: [] for p in predictors}
    shapes = _shapes(examples, cfg, predictors[0].encoder)
    # each shape may take latency_budget_s (60 s by default): a bar of rounds on stderr, off under -q
    bar = tqdm(
        total=len(shapes) * (cfg.warmup_runs + cfg.latency_runs),
        desc="timing latency",
        unit="round",
        leave=False,
        disable=not log.isEnabledFor(logging.INFO),
    )
    with bar:
        for b, s, batch_examples in shapes:
            bar.set_postfix_str(f"batch {b} x {s if s is not None else 'natural'}")
            # pad to exactly s positions, the fixed-shape serving case (PEERS.md measures the same)
            batches = [p.encode(batch_examples, pad_to=s) for p in predictors]
            times = interleaved_rounds(
                [slowed(p.name, functools.partial(p.predict_batch, batch)) for p, batch in zip(predictors, batches)],
                cfg,
                progress=bar,
            )
            for p, batch, t in zip(predictors, batches, times):
                seq = p.encoder.length_of(batch.feed)
                # each round's time, in order: selection's paired bootstrap reads them (validate.select)
                rows[p.name].append({**summarize(t, batch_size=b, seq_len=seq).to_dict(), "rounds_ms": _ms(t)})
    return rows


def _ms(seconds: Sequence[float]) -> list[float]:
    return [round(1e3 * s, 4) for s in seconds]


def interleaved_workload(
    predictors: Sequence, examples: Sequence[Any], *, batch_size: int = 32, rounds: int = 2
) -> dict[str, dict[str, Any]]:
    """The whole eval set, length-sorted, batches padded to their longest example: serving
    throughput (tokenization included); ``rounds`` passes after a warm-up, each batch run by every
    predictor in turn (interleaved per batch), the median pass kept. ``batches_ms``: each batch's
    time, pass after pass, paired across predictors (selection's bootstrap resamples them)."""
    examples = list(examples)
    for p in predictors:
        p.predict(examples[: batch_size * 2], batch_size=batch_size)  # warm-up
    order = np.argsort(predictors[0].encoder.lengths(examples), kind="stable")
    groups = [[examples[i] for i in order[s : s + batch_size]] for s in range(0, len(examples), batch_size)]
    calls = [[slowed(p.name, functools.partial(_encode_and_predict, p, g)) for g in groups] for p in predictors]
    batches: dict[str, list[float]] = {p.name: [] for p in predictors}
    for _ in range(rounds):
        for k in range(len(groups)):
            for p, runs in zip(predictors, calls):
                t0 = time.perf_counter()
                runs[k]()
                batches[p.name].append(time.perf_counter() - t0)
    out = {}
    for name, b in batches.items():
        s = [sum(b[r * len(groups) : (r + 1) * len(groups)]) for r in range(rounds)]
        med = sorted(s)[len(s) // 2]
        out[name] = {
            "texts": len(examples),
            "batch_size": batch_size,
            "seconds": round(med, 3),
            "min_s": round(min(s), 3),
            "max_s": round(max(s), 3),
            "rounds": rounds,
            "texts_per_s": round(len(examples) / med, 2),
            "batches_ms": _ms(b),
        }
    return out


def evaluate(
    task,
    teacher,
    candidates: Sequence,
    es,
    cfg,
    *,
    sizes_mb: dict[str, float] | None = None,
    untimed: Sequence[str] = (),
    teacher_done: tuple[dict[str, dict[str, Any]], dict[str, Any]] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """``teacher`` and ``candidates`` are entered predictors (runner loaded). Returns
    (report['models'], each model's outputs on the eval set). Models named in ``untimed`` get
    metrics only (calibration-seed variants). ``teacher_done``: the teacher was measured and timed
    in its own phase (this function's result for it alone) and closed since; ``teacher`` is then None.
    A candidate's outputs keep only what its metrics read against the teacher's (``Task.reduce_outputs``)."""
    examples = list(es.examples)
    sizes_mb = sizes_mb or {}
    models, outputs = ({}, {}) if teacher_done is None else (dict(teacher_done[0]), dict(teacher_done[1]))
    everyone = [*([teacher] if teacher is not None else []), *candidates]
    reference = teacher.name if teacher is not None else next(iter(models))
    for predictor in tqdm(everyone, desc="validating", unit="model", leave=False):
        with PeakRss() as mem:
            t0 = time.perf_counter()
            out = task.eval_outputs(predictor, es, cfg)
            accuracy_s = time.perf_counter() - t0
        if predictor is teacher:
            metrics = task.reference_metrics(out, es)
        else:
            metrics = task.fidelity(outputs[reference], out, es)
            out = task.reduce_outputs(outputs[reference], out)
        outputs[predictor.name] = out
        models[predictor.name] = {
            "metrics": {k: round(v, 6) for k, v in metrics.items()},
            "latency": [],
            "real_workload": None,
            "size_mb": sizes_mb.get(predictor.name),
            "peak_rss_growth_mb": mem.growth_mb,
            "eval_seconds": round(accuracy_s, 2),
        }
        log.info("%s: %s", predictor.name, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    timed = [p for p in everyone if p.name not in untimed]
    if not timed:
        return models, outputs
    for name, rows in interleaved_latency(timed, examples, cfg).items():
        models[name]["latency"] = rows
    for name, extra in task.extra_latency(timed, examples, cfg).items():
        models[name].update(extra)
    if cfg.real_workload:
        for name, row in interleaved_workload(timed, examples).items():
            models[name]["real_workload"] = row
    return models, outputs


def ratios(models: dict[str, dict[str, Any]], *, reference: str, candidate: str, task: Any = None) -> dict[str, Any]:
    """Latency ratios (candidate / reference: < 1 is faster) per shape, the task's own timings
    (``Task.extra_ratios``) and real workload."""
    ref, cand = models[reference], models[candidate]
    out: dict[str, Any] = {}
    for r_row, c_row in zip(ref["latency"], cand["latency"]):
        out[f"b{r_row['batch_size']}xs{r_row['seq_len']}_p50"] = round(c_row["p50_ms"] / r_row["p50_ms"], 3)
    if task is not None:
        out.update(task.extra_ratios(ref, cand))
    if ref.get("real_workload") and cand.get("real_workload"):
        out["real_workload_time"] = round(cand["real_workload"]["seconds"] / ref["real_workload"]["seconds"], 3)
    return out


def file_size_mb(path: str | Path) -> float:
    p = Path(path)
    total = p.stat().st_size
    # ONNX external data beside the model; an OpenVINO IR's weights
    for data in (p.with_name(p.name + ".data"), p.with_suffix(".bin") if p.suffix == ".xml" else None):
        if data is not None and data.exists():
            total += data.stat().st_size
    return round(total / 2**20, 2)


def _encode_and_predict(predictor: Any, examples: list) -> Any:
    """One workload batch as served: tokenized, then run."""
    return predictor.predict_batch(predictor.encode(examples))
