"""Mixed precision for the trainer: which autocast dtype a recipe's ``precision`` means here.

``auto`` picks bf16 on a CUDA GPU that supports it, else fp16 on CUDA (with a gradient scaler);
on a CPU, bf16 when it has native bf16 instructions (AVX512-BF16 or AMX: about 2.5x faster
training than fp32 for MiniLM, with the same result), else fp32. Weights and optimizer state
always stay fp32; only the forward passes run in the lower precision.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from modelpress.errors import BadInputError


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16 | fp16
    device_type: str  # cpu | cuda

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def needs_grad_scaler(self) -> bool:
        return self.name == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (else bf16 autocast is slow)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private: absent → False
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """The precision to train with on ``device``; BadInputError when the device cannot do it."""
    cuda = device.type == "cuda"
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    if requested == "auto" and cuda:
        name = "bf16" if bf16_ok else "fp16"
    elif requested == "auto":
        name = "bf16" if cpu_has_native_bf16() else "fp32"
    elif requested == "fp16" and not cuda:
        raise BadInputError("distill.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    elif requested == "bf16" and cuda and not bf16_ok:
        raise BadInputError("distill.precision: this GPU has no bf16 support; use fp16 or fp32")
    else:
        name = requested
    return Precision(name=name, device_type=device.type)
