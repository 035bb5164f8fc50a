"""What this machine's CPU does with int8 GEMMs: the facts quantization choices depend on.

On x86 without VNNI (AVX2, or AVX-512 without ``avx512_vnni``), ONNX Runtime's u8×s8 GEMM uses
``vpmaddubsw``, which adds two u8·s8 products into a *saturating* int16: with 8-bit weights
(±127) and activations near 255 the pair sum reaches 64,770 and clips at 32,767. Measured here
(AMD EPYC Zen 1, AVX2 only) on a tiny BERT: mean cosine to fp32 0.9886 with ±127 weights,
0.99972 with ±63 (7-bit, ONNX Runtime's ``reduce_range``). VNNI (``vpdpbusd``) and AMX accumulate
in int32 and never saturate; neither do ARM's dot-product kernels.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

#: CPU flags (Linux /proc/cpuinfo names) whose int8 dot products accumulate in int32
NON_SATURATING_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo is not available)."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return frozenset()
    for line in info.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def int8_gemm_saturates() -> bool:
    """Whether ONNX Runtime's u8×s8 GEMM on this CPU can saturate with full-range 8-bit weights.

    x86 only; where the flags cannot be read (not Linux) an x86 CPU is assumed to saturate, which
    costs half a bit of weight precision rather than accuracy lost to clipping.
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    flags = cpu_flags()
    return not flags or not (flags & NON_SATURATING_FLAGS)
