"""ONNX Runtime on the GPU (CUDA or TensorRT execution provider) behind the Runner interface.

Place in the pipeline: validate and bench compare these with the TensorRT engine and the CPU
runner on the same files: ``OrtGpuRunner("model.int8.onnx", provider="tensorrt")`` runs the Q/DQ
model through ONNX Runtime's TensorRT EP; ``provider="cuda"`` runs any model with CUDA kernels.
Needs ``onnxruntime-gpu`` (which replaces the CPU ``onnxruntime`` wheel); without the provider,
loading raises :class:`BackendUnavailableError`.

Not exercised in CI beyond the refusal path (no GPU there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
import onnxruntime as ort

from modelpress.errors import BackendUnavailableError, BadInputError, ModelpressError
from modelpress.runtimes.base import Runner
from modelpress.runtimes.tensorrt.config import EngineConfig
from modelpress.runtimes.tensorrt.engine import onnx_input_names
from modelpress.modalities import get_modality

PROVIDERS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
_MIB = 1 << 20


class OrtGpuRunner(Runner):
    """An ONNX model on ONNX Runtime's CUDA or TensorRT execution provider.

    ``cfg`` gives the TensorRT EP its optimization profile and workspace (default: the recipe
    defaults). ``cache_dir`` (TensorRT EP only) keeps its engine and timing caches between runs;
    None keeps nothing on disk, so no file is written outside the run folder by default.
    """

    def __init__(
        self,
        onnx_path: str | Path,
        provider: str = "cuda",
        *,
        device_id: int = 0,
        cfg: EngineConfig | None = None,
        cache_dir: str | Path | None = None,
        modality: str = "text",
        threads: int = 0,
        name: str | None = None,
    ) -> None:
        if provider not in PROVIDERS:
            raise BadInputError(f"provider '{provider}' is not one of {', '.join(PROVIDERS)}")
        self.onnx_path = Path(onnx_path)
        self.provider = provider
        self.device_id = device_id
        self.cfg = cfg or EngineConfig()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.modality = modality  # shapes of the TensorRT EP's optimization profile
        self.name = name or f"ort-{provider}"
        self._inputs: tuple[str, ...] | None = None
        self._session: Any = None
        self._outputs: tuple[str, ...] = ()

    @property
    def input_names(self) -> tuple[str, ...]:
        if self._inputs is None:
            self._inputs = onnx_input_names(self.onnx_path)
        return self._inputs

    def _load(self) -> None:
        wanted = PROVIDERS[self.provider]
        available = ort.get_available_providers()
        if wanted not in available:
            raise BackendUnavailableError(
                f"{self.onnx_path}: ONNX Runtime {ort.__version__} has no {wanted} (available: "
                f"{', '.join(available)}); install onnxruntime-gpu in place of onnxruntime"
            )
        if not self.onnx_path.is_file():
            raise BadInputError(f"{self.onnx_path}: no such ONNX file")
        providers: list[Any] = [(wanted, self._provider_options())]
        if self.provider == "tensorrt":
            # nodes TensorRT cannot take run on CUDA rather than silently on the CPU
            providers.append(("CUDAExecutionProvider", {"device_id": self.device_id}))
        session = ort.InferenceSession(str(self.onnx_path), providers=providers)
        # ONNX Runtime drops a provider whose CUDA/TensorRT libraries fail to load with only a
        # warning, and the CPU would then be measured under a GPU label
        if session.get_providers()[0] != wanted:
            raise BackendUnavailableError(
                f"{self.onnx_path}: ONNX Runtime could not start {wanted} (session has "
                f"{', '.join(session.get_providers())}); check the CUDA/cuDNN/TensorRT libraries"
            )
        self._session = session
        self._inputs = tuple(i.name for i in session.get_inputs())
        self._outputs = tuple(o.name for o in session.get_outputs())

    def _provider_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"device_id": self.device_id}
        if self.provider == "cuda":
            return options

        cfg = self.cfg
        profile = get_modality(self.modality).engine_profile(self.input_names, cfg)

        def shapes(which: str) -> str:
            return ",".join(f"{n}:{'x'.join(map(str, s[which]))}" for n, s in profile.items())

        options.update(
            {
                "trt_max_workspace_size": cfg.workspace_mb * _MIB,
                # explicit profiles: without them the EP rebuilds its engine whenever a shape grows
                "trt_profile_min_shapes": shapes("min"),
                "trt_profile_opt_shapes": shapes("opt"),
                "trt_profile_max_shapes": shapes("max"),
                # the EP builds weakly typed networks, where Q/DQ layers still need the INT8 flag
                "trt_int8_enable": _has_qdq(self.onnx_path),
            }
        )
        if cfg.builder_optimization_level is not None:
            options["trt_builder_optimization_level"] = cfg.builder_optimization_level
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            options.update(
                {
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(self.cache_dir),
                    "trt_timing_cache_enable": True,
                    "trt_timing_cache_path": str(self.cache_dir),
                }
            )
        return options

    def close(self) -> None:
        self._session = None

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise ModelpressError(f"{self.onnx_path}: runner used outside its `with` block")
        selected = self.select(feed)
        missing = [n for n in self.input_names if n not in selected]
        if missing:
            raise BadInputError(f"{self.onnx_path}: feed lacks input(s) {', '.join(missing)}")
        values = self._session.run(list(self._outputs), selected)
        return dict(zip(self._outputs, values, strict=True))


def _has_qdq(onnx_path: Path) -> bool:
    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def ort_cuda_runner(onnx_path: str | Path, **options: Any) -> OrtGpuRunner:
    """The ``ort-cuda`` runtime of the registry."""
    return OrtGpuRunner(onnx_path, "cuda", **options)


def ort_tensorrt_runner(onnx_path: str | Path, **options: Any) -> OrtGpuRunner:
    """The ``ort-tensorrt`` runtime of the registry (ONNX Runtime's TensorRT execution provider)."""
    return OrtGpuRunner(onnx_path, "tensorrt", **options)
