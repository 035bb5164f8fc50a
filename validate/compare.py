"""Validation: run the teacher and each candidate predictor on the eval set; metrics and latency.

Takes predictors (encoder → runner → task post-processing), never a backend. Produces the
``models`` part of report.json: per model, its fidelity metrics vs the teacher (the task's),
its latency per (batch, shape), its real-workload throughput, file size and peak memory growth.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from modelpress.validate.latency import PeakRss, summarize, time_calls

log = logging.getLogger(__name__)


def latency_table(predictor, examples: Sequence[Any], cfg) -> list[dict[str, Any]]:
    rows = []
    for b in cfg.batch_sizes:
        for s in cfg.seq_lengths:
            batch_examples = [examples[i % len(examples)] for i in range(b)]
            # pad to exactly s positions, the fixed-shape serving case (PEERS.md measures the same)
            batch = predictor.encode(batch_examples, pad_to=s)
            times = time_calls(lambda: predictor.predict_batch(batch), runs=cfg.latency_runs, warmup=cfg.warmup_runs)
            seq = next(iter(batch.feed.values())).shape[1]
            rows.append(summarize(times, batch_size=b, seq_len=seq).to_dict())
    return rows


def real_workload(predictor, examples: Sequence[Any], *, batch_size: int = 32) -> dict[str, Any]:
    """The whole eval set, length-sorted, batches padded to their longest example: serving throughput."""
    predictor.predict(examples[: batch_size * 2], batch_size=batch_size)  # warm-up
    t0 = time.perf_counter()
    predictor.predict(examples, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    return {"texts": len(examples), "batch_size": batch_size, "seconds": round(seconds, 3),
            "texts_per_s": round(len(examples) / seconds, 2)}


def evaluate(task, teacher, candidates: Sequence, es, cfg, *,
             sizes_mb: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """``teacher`` and ``candidates`` are entered predictors (runner loaded). Returns report['models']."""
    examples = list(es.examples)
    sizes_mb = sizes_mb or {}
    models: dict[str, dict[str, Any]] = {}
    teacher_out = None
    for predictor in tqdm([teacher, *candidates], desc="validating", unit="model", leave=False):
        with PeakRss() as mem:
            t0 = time.perf_counter()
            out = predictor.predict(examples, batch_size=cfg.batch_size)
            accuracy_s = time.perf_counter() - t0
            lat = latency_table(predictor, examples, cfg)
            workload = real_workload(predictor, examples) if cfg.real_workload else None
        if teacher_out is None:
            teacher_out = out
            metrics = task.reference_metrics(teacher_out, es)
        else:
            metrics = task.fidelity(teacher_out, out, es)
        models[predictor.name] = {
            "metrics": {k: round(v, 6) for k, v in metrics.items()},
            "latency": lat,
            "real_workload": workload,
            "size_mb": sizes_mb.get(predictor.name),
            "peak_rss_growth_mb": mem.growth_mb,
            "eval_seconds": round(accuracy_s, 2),
        }
        log.info("%s: %s", predictor.name, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return models


def ratios(models: dict[str, dict[str, Any]], *, reference: str, candidate: str) -> dict[str, Any]:
    """Latency ratios (candidate / reference: < 1 is faster) per shape and real workload."""
    ref, cand = models[reference], models[candidate]
    out: dict[str, Any] = {}
    for r_row, c_row in zip(ref["latency"], cand["latency"]):
        out[f"b{r_row['batch_size']}xs{r_row['seq_len']}_p50"] = round(c_row["p50_ms"] / r_row["p50_ms"], 3)
    if ref.get("real_workload") and cand.get("real_workload"):
        out["real_workload_time"] = round(cand["real_workload"]["seconds"] / ref["real_workload"]["seconds"], 3)
    return out


def file_size_mb(path: str | Path) -> float:
    p = Path(path)
    total = p.stat().st_size
    data = p.with_name(p.name + ".data")
    if data.exists():
        total += data.stat().st_size
    return round(total / 2**20, 2)
