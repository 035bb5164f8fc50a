"""ONNX Runtime CPU runner: the runtime the int8 bundle deploys on, behind the Runner interface."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from modelpress.errors import BadInputError
from modelpress.runtimes.artifacts import RuntimeArtifact
from modelpress.runtimes.base import Runner


class OnnxRuntimeArtifact(RuntimeArtifact):
    """ONNX Runtime ships ``model.int8.onnx``: the quantization plan's own output, nothing more to write."""

    runtime = "onnxruntime"

    def offers(self, *, recipe: Any, target: Any) -> tuple[list[Any], list[str]]:
        # fp32 on ONNX Runtime is selection's reference, offered always (runtimes.artifacts.reference_offer)
        offers, notes = super().offers(recipe=recipe, target=target)
        if "bf16" in recipe.select.candidates:
            notes.append("onnxruntime: no bf16 candidate (ONNX Runtime has no fast bf16 CPU path)")
        return offers, notes


def session_options(threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    # idle ORT thread pools spin and steal the cores from whatever runs next (PEERS.md pitfall 9)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class OnnxRuntimeRunner(Runner):
    def __init__(
        self,
        model_path: str | Path,
        *,
        threads: int = 0,
        name: str | None = None,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
    ):
        self.model_path = Path(model_path)
        self.threads = threads
        self.providers = providers
        self.name = name or self.model_path.name
        self._session = None

    def _load(self) -> None:
        import onnxruntime as ort

        if not self.model_path.is_file():
            raise BadInputError(f"{self.model_path}: ONNX model not found")
        try:
            self._session = ort.InferenceSession(
                str(self.model_path), session_options(self.threads), providers=list(self.providers)
            )
        except (
            ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
        ) as exc:
            raise BadInputError(f"{self.model_path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
        self._inputs = tuple(i.name for i in self._session.get_inputs())
        self._outputs = [o.name for o in self._session.get_outputs()]

    def close(self) -> None:
        self._session = None

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._inputs

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, self.select(feed))))
