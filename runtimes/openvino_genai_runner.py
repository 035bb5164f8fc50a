"""OpenVINO GenAI's runner: the stateful IR of a text-generation bundle's ``openvino_genai/`` folder
(written by ``runtimes.openvino_genai_folder``), which ``openvino_genai.LLMPipeline`` opens.

The folder holds the IR of the same plan as ``openvino/model.xml`` (``openvino_runner.write_openvino_ir``)
made stateful the way optimum-intel exports decoders for GenAI: a ``beam_idx`` input [batch] (int32)
picks the cache rows (a Gather on each past), each ``past_key_values.*`` / ``present.*`` pair becomes
a variable that lives in the infer request (ReadValue/Assign), and each variable starts as zeros of
[batch, kv_heads, 0, head_dim] with the batch of ``input_ids``. Beside it ``openvino_tokenizer.xml``
and ``openvino_detokenizer.xml`` (the bundle's tokenizer converted by openvino-tokenizers) and
``generation_config.json`` (greedy, its end-of-sequence token). So
``openvino_genai.LLMPipeline(bundle / "openvino_genai", "CPU", **PIPELINE_PROPERTIES)`` generates.

On a CPU with bf16 dot products LLMPipeline runs the float parts in bf16 and keeps the KV cache
in u8 unless told otherwise; :data:`PIPELINE_PROPERTIES` (f32 both) is what validation measured with
``validate.openvino_precision = "f32"``.

The runner (``openvino-genai`` in ``validate.runtimes``) runs that stateful IR through one OpenVINO
infer request with those properties. The cache stays in the request: its ``present`` outputs are
shape-only placeholders (no memory), which fed back as the past continue the state, or cut it back
to their length (validation times one decode step again and again); a past of other tensors is
loaded into the state, and an empty past starts afresh. So validation, ``generate`` and the decode
timings run through it unchanged. ``openvino-genai`` and ``openvino-tokenizers`` are the
``openvino-genai`` extra; the runner itself needs only ``openvino``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from modelpress.errors import BadInputError
from modelpress.runtimes.base import Runner
from modelpress.runtimes.openvino_runner import _existing, _readable, checked_precision

#: LLMPipeline's properties for what validation measured at ``openvino_precision = "f32"``
PIPELINE_PROPERTIES = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
BEAM_IDX = "beam_idx"


class _Placeholder(np.ndarray):
    """A ``present`` output of the stateful runner: the shape of the cache, none of its values."""


def _placeholder(shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(np.zeros((), np.float32), shape).view(_Placeholder)


class OpenVINOGenAIRunner(Runner):
    """The stateful IR behind the Runner interface (module docstring: what its ``present`` outputs are)."""

    def __init__(
        self, model_path: str | Path, *, threads: int = 0, precision: str = "f32", name: str | None = None
    ) -> None:
        checked_precision(precision)
        self.model_path = Path(model_path)
        self.threads = threads
        self.precision = precision
        self.name = name or f"openvino-genai-{precision}"
        self._request: Any = None
        self._length = 0  # the cache length the state holds

    @classmethod
    def options_from(cls, validate_cfg) -> dict:
        return {"precision": validate_cfg.openvino_precision}

    @classmethod
    def graph_inputs(cls, path) -> tuple[str, ...]:
        """The layout's inputs (the past included), as the stateless graph had them."""
        ov = _existing(path)
        with _readable(path, "read"):
            model = ov.Core().read_model(str(path))
        return _stateless_inputs(model)

    def _load(self) -> None:
        ov = _existing(self.model_path)
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": str(self.threads or os.cpu_count() or 1),
            "INFERENCE_PRECISION_HINT": self.precision,
            "KV_CACHE_PRECISION": "f32",
        }
        with _readable(self.model_path, "load"):
            model = ov.Core().read_model(str(self.model_path))
            if BEAM_IDX not in {p.get_any_name() for p in model.inputs}:
                raise BadInputError(f"{self.model_path}: not a stateful decoder (no {BEAM_IDX} input)")
            self._variables = _variables(model)  # past name -> (variable id, kv heads, head size)
            compiled = ov.Core().compile_model(model, "CPU", config)
        self._tensor = ov.Tensor
        self._request = compiled.create_infer_request()
        states = {s.name: s for s in self._request.query_state()}
        self._states = {past: states[var] for past, (var, _, _) in self._variables.items()}
        self._inputs = tuple(p.get_any_name() for p in compiled.inputs if p.get_any_name() != BEAM_IDX)
        self._logits = compiled.output("logits")

    def close(self) -> None:
        self._request = None

    @property
    def input_names(self) -> tuple[str, ...]:
        return (*self._inputs, *self._variables)

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = feed["input_ids"]
        self._prepare_state({name: feed[name] for name in self._variables if name in feed})
        inputs = {k: np.ascontiguousarray(feed[k]) for k in self._inputs}
        inputs[BEAM_IDX] = np.arange(ids.shape[0], dtype=np.int32)
        self._request.infer(inputs)
        logits = np.array(self._request.get_tensor(self._logits).data)  # copied: the request reuses it
        self._length += ids.shape[1]
        return {
            "logits": logits,
            **{
                _present(n): _placeholder((ids.shape[0], h, self._length, d))
                for n, (_, h, d) in self._variables.items()
            },
        }

    def _prepare_state(self, past: Mapping[str, np.ndarray]) -> None:
        """The state the feed's past stands for: empty, the last steps' (kept or cut back), or loaded."""
        lengths = {p.shape[2] for p in past.values()}
        if len(lengths) > 1:
            raise BadInputError("openvino-genai: the past tensors have different lengths")
        length = lengths.pop() if lengths else 0
        if length == 0:
            self._request.reset_state()
            self._length = 0
        elif all(isinstance(p, _Placeholder) for p in past.values()) and length <= self._length:
            if length < self._length:  # the same step again: cut the cache back to the fed length
                for state in self._states.values():
                    state.state = self._tensor(np.ascontiguousarray(state.state.data[:, :, :length]))
                self._length = length
        else:  # a past of real values: load it
            for name, value in past.items():
                self._states[name].state = self._tensor(np.ascontiguousarray(value, dtype=np.float32))
            self._length = length


def _present(past_name: str) -> str:
    return "present." + past_name[len("past_key_values.") :]


def _variables(model: Any) -> dict[str, tuple[str, int, int]]:
    """The past inputs the stateful model took before its cache became state, each with its
    variable (the transformation names it past + present) and its KV heads and head size."""
    found = {}
    for op in model.get_ops():
        if op.get_type_name() == "ReadValue" and op.get_variable_id().startswith("past_key_values."):
            var = op.get_variable_id()
            shape = op.get_output_partial_shape(0)
            found[var[: var.index("present.")]] = (var, shape[1].get_length(), shape[3].get_length())
    layers = sorted({int(name.split(".")[1]) for name in found})
    return {f"past_key_values.{i}.{kv}": found[f"past_key_values.{i}.{kv}"] for i in layers for kv in ("key", "value")}


def _stateless_inputs(model: Any) -> tuple[str, ...]:
    names = tuple(p.get_any_name() for p in model.inputs if p.get_any_name() != BEAM_IDX)
    return (*names, *_variables(model))
