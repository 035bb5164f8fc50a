"""Process memory readings used in reports and benchmarks."""

from __future__ import annotations

from pathlib import Path


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
