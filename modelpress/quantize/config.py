"""Typed settings of the static int8 quantizer (recipe section ``[quantize]``) and its presets.

The ``onnxruntime`` preset is what runs fastest and most accurately on x86 CPUs (VNNI/AMX):
asymmetric uint8 activations, symmetric int8 per-channel weights, Q/DQ that ONNX Runtime fuses
into ``MatMulIntegerToFloat``. The ``tensorrt`` preset is what TensorRT's explicit quantization
accepts: symmetric int8 activations and weights, zero point 0 (TensorRT supports nothing else).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from modelpress.errors import BadInputError
from modelpress.config_check import check_fields
from modelpress.runtimes.cpu import int8_gemm_saturates

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
PRESETS = ("onnxruntime", "tensorrt")
FORMATS = ("auto", "qdq", "ort")
MODES = ("static", "auto", "weight-only")
AUTO_SENSITIVITIES = ("sqnr", "output")
WEIGHT_BITS = (8, 4)
INT4_METHODS = ("rtn", "awq", "gptq")
BLOCK_SIZES = (16, 32, 64, 128, 256)  # what ONNX Runtime's MatMulNBits kernels take


@dataclass(frozen=True)
class QuantizeConfig:
    mode: str = "static"  # "static" | "auto" (accuracy-aware search) | "weight-only" (MatMulNBits, see README)
    preset: str = "onnxruntime"  # "onnxruntime" (u8 act, CPU) | "tensorrt" (s8 symmetric act)
    format: str = "auto"  # "qdq" (portable Q/DQ) | "ort" (ORT fused int8 ops) | "auto" (by preset)
    calibration_method: str = "minmax"  # "minmax" | "entropy" | "percentile"
    percentile: float = 99.999  # kept share of |values| for calibration_method = "percentile"
    num_bins: int = field(
        default=2048, metadata={"min": 128, "max": 65536}
    )  # histogram bins per tensor (entropy / percentile); memory bound
    op_types: tuple[str, ...] = ("MatMul", "Gemm", "Conv")  # ops whose *constant-weight* nodes get int8
    nodes_to_exclude: tuple[str, ...] = ()  # node names kept fp32
    per_channel: bool = True  # per-output-channel weight scales
    symmetric_activations: bool | None = None  # None: from the preset
    reduce_range: bool | None = None  # 7-bit weights (±63); None: where the target's int8 GEMM saturates
    exclude_padding: bool = True  # calibrate on real tokens only (attention_mask == 1)
    smoothquant: bool = True  # migrate activation outliers into weights (SmoothQuant)
    smoothquant_alpha: float = 0.8  # migration strength, 0..1
    fuse: bool = True  # "ort" format: write on ONNX Runtime's fused graph (Attention → QAttention)
    calibration_seeds: int = field(
        default=1, metadata={"min": 1}
    )  # calibrate K times on different samples; gate the worst
    max_candidates: int = field(default=8, metadata={"min": 1})  # auto mode: most candidates tried
    # auto mode: the order nodes go back to fp32: "sqnr" (each node alone on fp32 inputs, cheap) or "output"
    # (the whole int8 model's output error with the node alone in fp32: sees errors grow through later layers;
    # one write and run per node, quantize.sensitivity)
    auto_sensitivity: str = "sqnr"
    weight_bits: int = 8  # weight-only: 8 or 4 bits per weight
    # weight-only: input rows per weight scale (16, 32, 64, 128, 256). 128, as NNCF and ORT's quantizer: the
    # 0.5 B int4 decoder decoded 1.4x faster than at 32 (onnxruntime-genai's builder's CPU default) and,
    # with the head 8-bit, kept the bench GPT closer to fp32 than block 32 all-int4 (docs/causal-lm.md)
    block_size: int = 128
    accuracy_level: int = field(
        default=4, metadata={"min": 0, "max": 4}
    )  # weight-only: MatMulNBits compute (0/1 fp32, 4 int8)
    int4_method: str = field(
        default="gptq", metadata={"choices": INT4_METHODS}
    )  # weight-only int4: "gptq" | "awq" (from the calibration set) | "rtn" (round to nearest, no data)
    int8_budget: float = field(
        default=0.0, metadata={"min": 0.0, "max": 1.0}
    )  # weight-only int4: the most sensitive MatMuls stay int8 while they add ≤ this share of the int4 bytes
    # weight-only int4: the output layer's bits (the MatMul writing a model output: an LM head, a classifier).
    # 8, as NNCF's default and the builder's matmul_mixed_precision=last_matmul:int8; 4: as every other weight
    head_bits: int = 8
    # int8 Q·Kᵀ in the Q/DQ graphs (the OpenVINO IR; model.int8.onnx when format = "qdq"): Q/DQ on the
    # Q and K projection outputs. "auto": on where the target has VNNI/AMX (OpenVINO's int8 MHA kernel), decided
    # by for_target (unpinned: off); never in the "ort" format (ONNX Runtime's fused attention is its own)
    attention_scores: bool | str = "auto"

    def __post_init__(self) -> None:

        check_fields(self, "quantize")
        _check_choice("quantize.mode", self.mode, MODES)
        _check_choice("quantize.preset", self.preset, PRESETS)
        _check_choice("quantize.format", self.format, FORMATS)
        if self.format == "ort" and self.activation_symmetric:
            raise BadInputError('quantize.format = "ort" needs asymmetric (uint8) activations; use "qdq"')
        _check_choice("quantize.calibration_method", self.calibration_method, CALIBRATION_METHODS)
        if not 50.0 < self.percentile <= 100.0:
            raise BadInputError(f"quantize.percentile: expected a value in (50, 100], got {self.percentile}")
        if not 128 <= self.num_bins <= 65536:
            raise BadInputError(f"quantize.num_bins: expected 128..65536, got {self.num_bins}")
        if not 0.0 <= self.smoothquant_alpha <= 1.0:
            raise BadInputError(f"quantize.smoothquant_alpha: expected 0..1, got {self.smoothquant_alpha}")
        _check_choice("quantize.auto_sensitivity", self.auto_sensitivity, AUTO_SENSITIVITIES)
        if self.max_candidates < 1:
            raise BadInputError("quantize.max_candidates must be >= 1")
        if self.weight_bits not in WEIGHT_BITS:
            raise BadInputError(f"quantize.weight_bits: expected 8 or 4, got {self.weight_bits}")
        if self.block_size not in BLOCK_SIZES:
            raise BadInputError(
                f"quantize.block_size: expected one of {', '.join(map(str, BLOCK_SIZES))}, got {self.block_size}"
            )
        if not 0 <= self.accuracy_level <= 4:
            raise BadInputError(f"quantize.accuracy_level: expected 0..4, got {self.accuracy_level}")
        if self.int8_budget > 0 and (self.mode != "weight-only" or self.weight_bits != 4):
            raise BadInputError('quantize.int8_budget: only for mode = "weight-only" with weight_bits = 4')
        if self.head_bits not in WEIGHT_BITS:
            raise BadInputError(f"quantize.head_bits: expected 8 or 4, got {self.head_bits}")
        if self.mode == "weight-only" and self.calibration_seeds > 1:
            raise BadInputError('quantize.calibration_seeds: "weight-only" reads no calibration data; leave it at 1')
        if self.mode == "weight-only" and self.preset == "tensorrt":
            raise BadInputError(
                'quantize.mode = "weight-only" writes ONNX Runtime\'s MatMulNBits; TensorRT reads '
                'none of it (use "static" for the tensorrt preset)'
            )
        if isinstance(self.attention_scores, str) and self.attention_scores != "auto":
            raise BadInputError(
                f'quantize.attention_scores: expected "auto", true or false, got {self.attention_scores!r}'
            )
        unknown = set(self.op_types) - {"MatMul", "Gemm", "Conv"}
        if unknown:
            raise BadInputError(f"quantize.op_types: unsupported {sorted(unknown)}; supported: MatMul, Gemm, Conv")

    @property
    def eight_bit_head(self) -> bool:
        """Whether a weight-only int4 graph keeps its output layer 8-bit (``head_bits = 8``, the default;
        elsewhere the key says nothing)."""
        return self.head_bits == 8 and self.mode == "weight-only" and self.weight_bits == 4

    @property
    def graph_format(self) -> str:
        """The int8 graph written: TensorRT reads Q/DQ only; ONNX Runtime runs its fused ops fastest."""
        if self.format != "auto":
            return self.format
        return "qdq" if self.preset == "tensorrt" or self.activation_symmetric else "ort"

    @property
    def tensorrt_readable(self) -> bool:
        """Whether the written graph is what TensorRT's explicit quantization reads (Q/DQ, zero point 0)."""
        return self.graph_format == "qdq" and self.activation_symmetric

    def for_target(self, target: Any) -> "QuantizeConfig":
        """This config with its CPU-dependent choices pinned to ``target`` (``runtimes.target.Target``):
        7-bit weights for the onnxruntime preset where the target's int8 GEMM saturates; int8
        attention scores (``"auto"``) for the onnxruntime preset on an x86 target with VNNI/AMX,
        whose int8 dot products OpenVINO's MHA kernel uses (MiniLM at b32×128 on Zen 4, AVX512-VNNI:
        the attention subgraph 1.35× faster, the IR 1.09×; README). What the recipe wrote wins."""
        cpu_preset = self.preset == "onnxruntime"
        changes: dict[str, Any] = {}
        if self.reduce_range is None:
            changes["reduce_range"] = cpu_preset and target.int8_gemm_saturates
        if self.attention_scores == "auto":
            changes["attention_scores"] = cpu_preset and target.x86 and not target.int8_gemm_saturates
        return replace(self, **changes) if changes else self

    @property
    def int8_attention_scores(self) -> bool:
        """Whether Q/DQ graphs written from this config quantize Q·Kᵀ (``"auto"`` unpinned: no)."""
        return self.attention_scores is True

    @property
    def weight_qmax(self) -> int:
        """±127, or ±63 (ONNX Runtime's ``reduce_range``) for the onnxruntime preset on an x86 CPU
        without VNNI, whose u8×s8 GEMM saturates int16 pair sums (``runtimes.cpu``). Unpinned
        (:meth:`for_target` not called), the target is the build machine."""
        reduce = self.reduce_range
        if reduce is None:
            reduce = self.preset == "onnxruntime" and int8_gemm_saturates()
        return 63 if reduce else 127

    @property
    def activation_symmetric(self) -> bool:
        if self.symmetric_activations is not None:
            return self.symmetric_activations
        return self.preset == "tensorrt"

    def with_(self, **changes: Any) -> "QuantizeConfig":
        return replace(self, **changes)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise BadInputError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
