"""The CPU a bundle is pressed for: a named instruction-set level, or this machine (``target = "auto"``).

Everything in the plan that depends on the CPU follows the target, not the machine that builds the
bundle: a bundle built on a VNNI CI runner for an AVX2 fleet must carry 7-bit weights, because
ONNX Runtime's u8×s8 GEMM saturates int16 pair sums on CPUs without VNNI (``runtimes.cpu``; ONNX
Runtime issues #14642, #6004: different results on different CPUs). The levels are the x86-64
micro-architecture levels (``x86-64-v3`` = AVX2, ``x86-64-v4`` = AVX-512) refined by the int8 and
bf16 dot-product instructions that decide which kernels run; ``auto`` names the highest level this
CPU satisfies, with the CPU's own micro-architecture as ``archspec`` detects it.

A target records the flags it guarantees. ``load()`` checks them against the CPU it runs on
(:func:`missing_flags`): a bundle for ``avx512-vnni`` opened on an AVX2 machine would run, but with
saturating 8-bit weights and other timings than the ones its report shows.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass, field
from typing import Any, Mapping

from modelpress.errors import BadInputError
from modelpress.runtimes.cpu import NON_SATURATING_FLAGS, cpu_flags

_V3 = frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe"})
_V4 = _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
#: flags whose presence gives bf16 dot products (OpenVINO's bf16 inference precision)
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
X86 = ("x86_64", "amd64")
ARM = ("aarch64", "arm64")


@dataclass(frozen=True)
class CpuLevel:
    name: str
    arch: tuple[str, ...]  # platform.machine() values of this family
    flags: frozenset[str]  # what a CPU of this level has, at least
    about: str


#: the named targets, lowest first within each architecture (``auto`` picks the last one satisfied)
LEVELS: dict[str, CpuLevel] = {
    level.name: level
    for level in (
        CpuLevel("x86-64-v3", X86, _V3, "AVX2 + FMA (Haswell, Zen 1-3): int8 GEMM saturates, 7-bit weights"),
        CpuLevel("x86-64-v3+avx-vnni", X86, _V3 | {"avx_vnni"}, "AVX2 with AVX-VNNI (Alder Lake, Zen 5 client)"),
        CpuLevel("x86-64-v4", X86, _V4, "AVX-512 without VNNI (Skylake-SP): int8 GEMM saturates"),
        CpuLevel("avx512-vnni", X86, _V4 | {"avx512_vnni"}, "AVX-512 VNNI (Cascade Lake, Ice Lake, Zen 4)"),
        CpuLevel(
            "amx",
            X86,
            _V4 | {"avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16"},
            "AMX int8 / bf16 tiles (Sapphire Rapids and later)",
        ),
        CpuLevel("arm64", ARM, frozenset({"asimd"}), "64-bit Arm with NEON"),
    )
}
TARGET_CHOICES = ("auto", *LEVELS)
#: the flags a target records beyond its level's when it is this machine (they decide kernels too)
RECORDED_FLAGS = frozenset(
    {"avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni", "avx512_vnni", "asimddp", "i8mm", "bf16"}
)


@dataclass(frozen=True)
class Target:
    name: str  # a LEVELS name
    flags: frozenset[str]  # the instruction flags it guarantees
    arch: str  # x86_64 | aarch64
    detected: bool = False  # True: this machine (``auto``); timing-based choices are allowed
    microarchitecture: str | None = None  # archspec's name of this machine's CPU, when detected
    cpu: str | None = None  # the CPU's model name, when detected
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def x86(self) -> bool:
        return self.arch in X86

    @property
    def int8_gemm_saturates(self) -> bool:
        """Whether ONNX Runtime's u8×s8 GEMM saturates with ±127 weights on this target (x86 without VNNI/AMX)."""
        return self.x86 and not (self.flags & NON_SATURATING_FLAGS)

    @property
    def has_bf16(self) -> bool:
        return bool(self.flags & BF16_FLAGS) or (not self.x86 and "bf16" in self.flags)

    def describe(self) -> dict[str, Any]:
        """What ``bundle.json`` and the report record."""
        return {
            "name": self.name,
            "arch": self.arch,
            "flags": sorted(self.flags),
            "detected": self.detected,
            "microarchitecture": self.microarchitecture,
            "cpu": self.cpu,
            "int8_gemm_saturates": self.int8_gemm_saturates,
            "bf16": self.has_bf16,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Target":
        return cls(
            name=str(d["name"]),
            flags=frozenset(d.get("flags") or ()),
            arch=str(d.get("arch") or "x86_64"),
            detected=bool(d.get("detected")),
            microarchitecture=d.get("microarchitecture"),
            cpu=d.get("cpu"),
        )


def resolve_target(name: str = "auto") -> Target:
    """The target a recipe names: a level of :data:`LEVELS`, or ``"auto"`` (this machine)."""
    if name == "auto":
        return host_target()
    level = LEVELS.get(name)
    if level is None:
        raise BadInputError(f"target: expected one of {', '.join(TARGET_CHOICES)}, got {name!r}")
    return Target(name=level.name, flags=level.flags, arch=level.arch[0])


@functools.lru_cache(maxsize=1)
def host_target() -> Target:
    """This machine as a target: the highest level its flags satisfy, and the flags that decide kernels."""
    arch = platform.machine().lower()
    flags = cpu_flags()
    levels = [lv for lv in LEVELS.values() if arch in lv.arch and lv.flags <= flags]
    if levels:
        level, guaranteed = levels[-1], levels[-1].flags | (flags & RECORDED_FLAGS)
    else:  # an x86 without AVX2, or flags unreadable: the family's lowest name, with only the flags it has
        level = next((lv for lv in LEVELS.values() if arch in lv.arch), LEVELS["x86-64-v3"])
        guaranteed = flags & (level.flags | RECORDED_FLAGS)
    return Target(
        name=level.name,
        flags=frozenset(guaranteed),
        arch=arch or "x86_64",
        detected=True,
        microarchitecture=_microarchitecture(),
        cpu=_cpu_name(),
    )


def missing_flags(target: Target) -> list[str]:
    """The target's instruction flags this CPU lacks (empty: the bundle runs here as it was measured)."""
    here = platform.machine().lower()
    if (here in X86) != target.x86:
        return [f"arch {target.arch} (this machine is {here})"]
    return sorted(target.flags - cpu_flags())


def _microarchitecture() -> str | None:
    """archspec's name of this CPU (``zen2``, ``icelake``, or a generic level under a hypervisor that
    hides the model); None without archspec."""
    try:
        import archspec.cpu
    except ImportError:
        return None
    return str(archspec.cpu.host().name)


def _cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None
