"""Latency measurement: warm-up, then many timed runs, percentiles in a dataclass.

Shaped after optimum-benchmark's latency tracker. Times cover the model forward plus the task
head (pooling), not tokenization, as in ../shared/PEERS.md.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import psutil


@dataclass(frozen=True)
class LatencyStats:
    batch_size: int
    seq_len: int
    runs: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    throughput_per_s: float  # samples (texts) per second at the median

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(times_s: list[float], *, batch_size: int, seq_len: int) -> LatencyStats:
    ms = np.array(times_s) * 1e3
    p50 = float(np.percentile(ms, 50))
    return LatencyStats(
        batch_size,
        seq_len,
        len(ms),
        round(p50, 3),
        round(float(np.percentile(ms, 95)), 3),
        round(float(np.percentile(ms, 99)), 3),
        round(float(ms.mean()), 3),
        round(statistics.stdev(ms) if len(ms) > 1 else 0.0, 3),
        round(batch_size / (p50 / 1e3), 2),
    )


def time_calls(fn: Callable[[], object], *, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


class PeakRss:
    """Peak resident memory growth of this process while the block runs (sampled every 5 ms)."""

    def __init__(self) -> None:

        self._proc = psutil.Process()
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> "PeakRss":
        self.baseline = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def growth_mb(self) -> float:
        return round((self.peak - self.baseline) / 2**20, 1)


#: timed rounds kept per shape even when ``validate.latency_budget_s`` is spent
MIN_TIMED_ROUNDS = 5


def interleaved_rounds(calls: Sequence[Any], cfg, progress: Any = None) -> list[list[float]]:
    """Seconds of each call per timed round: ``warmup_runs`` untimed rounds, then up to
    ``latency_runs`` rounds that each run every call once, in turn, until ``latency_budget_s``
    is spent (never fewer than ``MIN_TIMED_ROUNDS``). ``progress`` (a tqdm bar) advances a round at
    a time, and by the rounds a spent budget skipped."""
    budget = getattr(cfg, "latency_budget_s", 0.0)
    times: list[list[float]] = [[] for _ in calls]
    started = None
    rounds = cfg.warmup_runs + cfg.latency_runs
    done = 0
    try:
        for r in range(rounds):
            if r == cfg.warmup_runs:
                started = time.perf_counter()
            elif (
                started is not None
                and budget
                and r - cfg.warmup_runs >= min(MIN_TIMED_ROUNDS, cfg.latency_runs)
                and time.perf_counter() - started >= budget
            ):
                break
            for k, call in enumerate(calls):
                t0 = time.perf_counter()
                call()
                if r >= cfg.warmup_runs:
                    times[k].append(time.perf_counter() - t0)
            done += 1
            if progress is not None:
                progress.update(1)
    finally:
        if progress is not None:
            progress.update(rounds - done)
    return times
