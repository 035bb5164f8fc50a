"""Process memory readings used in reports and benchmarks."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
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


#: madvise(2) advice (Linux ≥ 5.4): reclaim these pages now. Clean file-backed pages leave the process
#: (read back from the file on the next touch); pages the process changed are never lost (without swap
#: they simply stay), so it is safe on any mapping
MADV_PAGEOUT = 21
#: the weight files transformers maps rather than reads (safetensors)
WEIGHT_FILE_SUFFIXES = (".safetensors",)


def release_weight_pages(suffixes: tuple[str, ...] = WEIGHT_FILE_SUFFIXES) -> int:
    """Hand back the resident pages of the weight files this process has mapped (a PyTorch model
    loaded from safetensors reads its weights through the mapping: once the export has touched every
    weight they count in this process's RSS until it ends). The model stays usable: a weight touched
    again is read back from the file (the page cache, usually). Returns the bytes of the mappings
    advised; 0 where /proc or madvise is not available."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return 0
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = 0
    for line in maps.read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[5].endswith(suffixes):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if libc.madvise(start, end - start, MADV_PAGEOUT) == 0:
            advised += end - start
    if advised:
        log.debug("released the resident pages of %.0f MiB of mapped weights", advised / 2**20)
    return advised


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
