"""Lazy access to the optional GPU stack: ``tensorrt``, a CUDA-enabled PyTorch, the GPU's identity.

Place in the pipeline: every TensorRT / CUDA code path calls these first, so a CPU machine gets
one clear :class:`BackendUnavailableError` instead of an ImportError or a CUDA crash, and every
module of ``runtimes.tensorrt`` stays importable without a GPU.
"""

from __future__ import annotations

import dataclasses
import importlib
import shutil
import subprocess
from types import ModuleType

from modelpress.errors import BackendUnavailableError

_NVIDIA_SMI_TIMEOUT_S = 20


@dataclasses.dataclass(frozen=True)
class GpuIdentity:
    """What a TensorRT engine is tied to: the GPU model and its compute capability."""

    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


def require_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or :class:`BackendUnavailableError` saying how to get it."""
    try:
        return importlib.import_module("tensorrt")
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but libnvinfer is not
        raise BackendUnavailableError(
            f"TensorRT is not usable here ({exc}); engines need an NVIDIA GPU and "
            "`pip install tensorrt`; the ONNX artifacts are unaffected"
        ) from None


def require_torch_cuda() -> ModuleType:
    """``torch`` with a visible CUDA device (the TensorRT runner allocates buffers with it)."""
    import torch  # a hard dependency of the project; only its CUDA build is optional

    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"PyTorch {torch.__version__} sees no CUDA GPU; the TensorRT runner needs a CUDA "
            "build of PyTorch and an NVIDIA GPU"
        )
    return torch


def gpu_identity(device: int = 0) -> GpuIdentity:
    """Name and compute capability of CUDA device ``device``.

    Asks PyTorch when it has CUDA, else ``nvidia-smi`` (so an engine can be built on a machine
    whose PyTorch is the CPU build), else raises :class:`BackendUnavailableError`.
    """
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        return GpuIdentity(name=torch.cuda.get_device_name(device), compute_capability=(major, minor))
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise BackendUnavailableError("no NVIDIA GPU here: PyTorch sees no CUDA device and nvidia-smi is absent")
    try:
        out = subprocess.run(
            [smi, f"--id={device}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=_NVIDIA_SMI_TIMEOUT_S,
        ).stdout.strip()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        raise BackendUnavailableError(f"nvidia-smi could not describe GPU {device}: {exc}") from None
    name, _, cap = out.rpartition(",")
    major, _, minor = cap.strip().partition(".")
    if not (name and major.isdigit() and minor.isdigit()):
        raise BackendUnavailableError(f"nvidia-smi gave an unexpected GPU description: {out!r}")
    return GpuIdentity(name=name.strip(), compute_capability=(int(major), int(minor)))
