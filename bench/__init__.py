"""Benchmarks (`make bench` and friends): not installed, they read ../shared."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

#: the flags that decide which int8 / bf16 kernels a CPU runtime can use
KERNEL_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
    "asimddp",
    "i8mm",
)


def machine() -> dict:
    """The CPU every figure of a bench was measured on: its name, cores and kernel-relevant flags.
    Figures are only comparable within one run; this says which machine that run was."""
    from modelpress.runtimes.cpu import cpu_flags, int8_gemm_saturates

    fields = {"model name": platform.processor() or platform.machine()}
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "cpu family", "model") and key.strip() not in fields.keys() - {
                "model name"
            }:
                fields[key.strip()] = value.strip()
            if not line.strip():
                break
    flags = cpu_flags()
    return {
        "cpu": fields["model name"],
        "family_model": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel_flags": [f for f in KERNEL_FLAGS if f in flags],
        "int8_gemm_saturates": int8_gemm_saturates(),
        # the day of the run, which the docs' tables show (bench/docs_figures.py); older files have none
        "measured": datetime.date.today().isoformat(),
    }


def write_results(path: str | Path, result: dict) -> None:
    """The bench's JSON results at ``path`` (its folder made), and a line saying where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
