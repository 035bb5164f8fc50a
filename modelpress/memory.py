"""Process memory readings used in reports and benchmarks."""

from __future__ import annotations

import contextlib
import time
import logging
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


def process_peak_rss_mb() -> float | None:
    """This process's peak resident set (VmHWM), in MiB; None where /proc is not available.

    Unlike ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` seen from a parent, VmHWM belongs to the
    process's own address space, so a freshly exec'd process does not inherit its parent's peak.
    """
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def reset_peak_rss() -> bool:
    """Start this process's peak resident set (VmHWM) again from its current size (Linux ≥ 4.0:
    ``/proc/self/clear_refs``); False where that is not possible (the peak then runs on)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class StageMeter:
    """Wall time and peak resident memory of each stage of a run (the report's ``stages``): the
    peak is reset when a stage starts, so each row is that stage's own peak, not the run's so far."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float | None]] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        reset_peak_rss()
        start = time.perf_counter()
        log.debug("stage %s", name)
        failed = True
        try:
            yield
            failed = False
        finally:
            seconds = round(time.perf_counter() - start, 2)
            peak = process_peak_rss_mb()
            self.stages[name] = {"seconds": seconds, "peak_rss_mb": peak}
            # a failed stage's line is debug only: a fault the user caused stays one line on stderr
            log.log(logging.DEBUG if failed else logging.INFO, "stage %s: %.1f s, peak RSS %s MiB", name, seconds, peak)
