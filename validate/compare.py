"""Validation: run the teacher and each candidate predictor on the eval set; metrics and latency.

Takes predictors (tokenizer → runner → head), never a backend. Produces the ``models`` part of
report.json: per model, its fidelity metrics vs the teacher, its latency per (batch, sequence
length), its real-workload throughput, file size and peak memory growth.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from modelpress.validate import metrics as M
from modelpress.validate.evalsets import EvalSet
from modelpress.validate.latency import PeakRss, summarize, time_calls

log = logging.getLogger(__name__)


def fidelity(task: str, teacher_out: np.ndarray, cand_out: np.ndarray | None, es: EvalSet) -> dict[str, float]:
    if task == "feature-extraction":
        if cand_out is None:
            return M.embedding_reference_metrics(teacher_out, es.pairs)
        return M.embedding_metrics(teacher_out, cand_out, es.pairs)
    if cand_out is None:
        return M.classification_reference_metrics(teacher_out, es.labels)
    return M.classification_metrics(teacher_out, cand_out, es.labels)


def latency_table(predictor, texts: Sequence[str], cfg) -> list[dict[str, Any]]:
    rows = []
    for b in cfg.batch_sizes:
        for s in cfg.seq_lengths:
            batch_texts = [texts[i % len(texts)] for i in range(b)]
            # pad to exactly s tokens, the fixed-shape serving case (PEERS.md measures the same)
            feed = predictor.encode(batch_texts, pad_to=s)
            times = time_calls(lambda: predictor.predict_feed(feed), runs=cfg.latency_runs, warmup=cfg.warmup_runs)
            rows.append(summarize(times, batch_size=b, seq_len=feed["input_ids"].shape[1]).to_dict())
    return rows


def real_workload(predictor, texts: Sequence[str], *, batch_size: int = 32) -> dict[str, Any]:
    """All eval texts, length-sorted, batches padded to their longest text: serving throughput."""
    predictor.predict(texts[: batch_size * 2], batch_size=batch_size)  # warm-up
    t0 = time.perf_counter()
    predictor.predict(texts, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    return {"texts": len(texts), "batch_size": batch_size, "seconds": round(seconds, 3),
            "texts_per_s": round(len(texts) / seconds, 2)}


def evaluate(task: str, teacher, candidates: Sequence, es: EvalSet, cfg, *,
             sizes_mb: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """``teacher`` and ``candidates`` are entered predictors (runner loaded). Returns report['models']."""
    texts = list(es.texts)
    sizes_mb = sizes_mb or {}
    models: dict[str, dict[str, Any]] = {}
    teacher_out = None
    for predictor in tqdm([teacher, *candidates], desc="validating", unit="model", leave=False):
        with PeakRss() as mem:
            t0 = time.perf_counter()
            out = predictor.predict(texts, batch_size=cfg.batch_size)
            accuracy_s = time.perf_counter() - t0
            lat = latency_table(predictor, texts, cfg)
            workload = real_workload(predictor, texts) if cfg.real_workload else None
        if teacher_out is None:
            teacher_out = out
            metrics = fidelity(task, teacher_out, None, es)
        else:
            metrics = fidelity(task, teacher_out, out, es)
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
