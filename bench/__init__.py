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
    from modelpress.runtimes.target import host_target

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
    target = host_target()
    return {
        "cpu": fields["model name"],
        "family_model": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel_flags": [f for f in KERNEL_FLAGS if f in flags],
        "int8_gemm_saturates": int8_gemm_saturates(),
        # archspec's name of the CPU and the target level it satisfies (what `target = "auto"` pins), with
        # every flag the CPU reports, so a figure can be matched to the CPU level a bundle is pressed for
        "microarchitecture": target.microarchitecture,
        "target": target.name,
        "flags": sorted(flags),
        # the day of the run, which the docs' tables show (bench/docs_figures.py); older files have none
        "measured": datetime.date.today().isoformat(),
        # glibc's malloc tunables the process ran with (HUGE_PAGES: the LLM benches' huge pages), or null
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
    }


#: glibc's malloc asks for transparent huge pages (where the kernel's THP mode is "madvise"). A decode step
#: streams every weight once: on the 0.5 B int4 decoder (2-thread Zen 4) three copies of one model in one
#: process decoded 75.8 / 81.3 / 81.3 tokens/s with 4 KiB pages — the first one loaded slowest — and
#: 85.5 / 84.1 / 85.1 with this set
HUGE_PAGES = "glibc.malloc.hugetlb=1"


def with_huge_pages(module: str, argv: list[str] | None) -> None:
    """Run ``python -m module argv`` again with :data:`HUGE_PAGES` in ``GLIBC_TUNABLES`` unless it is set
    (glibc reads it at start): every peer in the process gets the same pages, and the first model loaded
    is no slower than the others. Returns only when it is set, or off Linux."""
    import sys

    if os.environ.get("GLIBC_TUNABLES") is not None or not sys.platform.startswith("linux"):
        return
    args = sys.argv[1:] if argv is None else argv
    os.execve(sys.executable, [sys.executable, "-m", module, *args], {**os.environ, "GLIBC_TUNABLES": HUGE_PAGES})


def write_results(path: str | Path, result: dict) -> None:
    """The bench's JSON results at ``path`` (its folder made), and a line saying where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def median_ms_by_shape(preds: dict, shapes: dict, rounds: int, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Round-robin over shapes and predictors (each round runs every predictor once per shape, so drift and
    contention hit all alike); the median milliseconds per shape and predictor, warm-up rounds dropped.
    Closes the predictors' runners."""
    return medians_ms(rounds_by_shape(preds, shapes, rounds, warmup))


def medians_ms(times: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """Per shape and predictor: the median of :func:`rounds_by_shape`'s seconds, in milliseconds."""
    import numpy as np

    return {s: {n: round(1e3 * float(np.median(v)), 2) for n, v in row.items()} for s, row in times.items()}


def rounds_by_shape(preds: dict, shapes: dict, rounds: int, warmup: int = 2) -> dict[str, dict[str, list[float]]]:
    """:func:`median_ms_by_shape`'s timing, each round's seconds kept (paired across predictors by round,
    for bench.selected's intervals). Closes the predictors' runners."""
    import time

    times: dict[str, dict[str, list[float]]] = {s: {n: [] for n in preds} for s in shapes}
    for r in range(warmup + rounds):
        for s, batch in shapes.items():
            for n, p in preds.items():
                t0 = time.perf_counter()
                p.predict_batch(batch)
                if r >= warmup:
                    times[s][n].append(time.perf_counter() - t0)
    for p in preds.values():
        p.runner.close()
    return times


def ort_dynamic_int8(source: Path, target: Path, **extra) -> Path:
    """The peer a user tries first: ONNX Runtime's ``quantize_dynamic``, per-channel int8 weights, with
    7-bit weights where this CPU's int8 GEMM saturates (ORT's own advice for CPUs without VNNI)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from modelpress.runtimes.cpu import int8_gemm_saturates

    quantize_dynamic(
        source, target, per_channel=True, weight_type=QuantType.QInt8, reduce_range=int8_gemm_saturates(), **extra
    )
    return target
