"""ONNX Runtime CPU runner: the runtime the int8 bundle deploys on, behind the Runner interface."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnxruntime as ort

from modelpress.errors import BadInputError
from modelpress.kv_cache import FIXED_INPUTS, LOGITS_TO_KEEP, PADDING_KEY, KVLayout
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


def session_options(threads: int = 0, *, spin: bool = False):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    # idle ORT thread pools spin and steal the cores from whatever runs next (PEERS.md pitfall 9); a decode
    # loop's back-to-back runs want them spinning: waking them for each small kernel cost the 0.5 B int4
    # decoder 11 % of its tokens/s (52.7 → 59.3 tok/s, bench.lm_decode_bench's runners, AVX512-VNNI Zen 4)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return opts


class InPlaceCache:
    """A right-padded decoder graph's KV cache (``export.fused_decoder``) in buffers of
    ``capacity`` positions, each bound with IO binding as both a layer's past and its present:
    GroupQueryAttention writes each step's keys and values at each row's length in that buffer
    (``past_present_share_buffer``), so no step copies or reallocates the cache. A first run that keeps
    fewer logits (``logits_to_keep``, which IO binding cannot feed: it is an overridable initializer)
    runs unbound on an empty past and copies its keys and values into the buffers once."""

    def __init__(self, session: Any, layout: KVLayout, batch: int, capacity: int) -> None:
        self.session = session
        self.layout = layout
        shape = (batch, layout.num_kv_heads, capacity, layout.head_dim)
        # zeros, not uninitialised memory: rows shorter than the batch's width never read past their length,
        # but nothing stale can leak in either; the OrtValues share these arrays' memory
        self.arrays = [np.zeros(shape, np.float32) for _ in layout.past_names()]
        self.buffers = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.arrays]
        self.binding = session.io_binding()
        self.binding.bind_output("logits")  # the first output bound: get_outputs()[0]
        # a graph older than logits_to_keep gives every position's logits whatever the caller keeps
        self.keeps = LOGITS_TO_KEEP in {i.name for i in session.get_overridable_initializers()}
        self.fresh = True  # nothing written yet: the first run may go unbound
        for past, present, buffer in zip(layout.past_names(), layout.present_names(), self.buffers):
            self.binding.bind_ortvalue_input(past, buffer)
            self.binding.bind_ortvalue_output(present, buffer)

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, keep: int = 0) -> np.ndarray:
        """One step: the new tokens [batch, new] and each row's mask (its length in ones, then
        zeros) → logits [batch, new, vocab]; with ``keep`` > 0 on the first run, of the last ``keep``
        positions only where the graph takes ``logits_to_keep`` (else still all ``new``)."""
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64)}
        feed["position_ids"] = np.zeros_like(ids)
        if keep and self.keeps and self.fresh:
            return self._first(feed, keep)
        self.fresh = False
        for name in FIXED_INPUTS:  # the binding points at the arrays' memory: they live until the run ends
            self.binding.bind_cpu_input(name, feed[name])
        self.binding.bind_output("logits")  # a step's logits have the step's shape: ORT allocates them anew
        self.session.run_with_iobinding(self.binding)
        return self.binding.get_outputs()[0].numpy()

    def _first(self, feed: dict[str, np.ndarray], keep: int) -> np.ndarray:
        feed[LOGITS_TO_KEEP] = np.array([keep], np.int64)
        names = ["logits", *self.layout.present_names()]
        logits, *presents = self.session.run(names, {**feed, **self.layout.empty(len(feed["input_ids"]))})
        width = feed["input_ids"].shape[1]
        for array, present in zip(self.arrays, presents):
            array[:, :, :width] = present
        self.fresh = False
        return logits


class OnnxRuntimeRunner(Runner):
    contrib_ops = True
    decoder_graphs = ("traced", "fused")
    back_to_back_options = {"spin": True}

    def __init__(
        self,
        model_path: str | Path,
        *,
        threads: int = 0,
        name: str | None = None,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        spin: bool = False,
    ):
        self.model_path = Path(model_path)
        self.threads = threads
        self.spin = spin
        self.providers = providers
        self.name = name or self.model_path.name
        self._session = None

    def _load(self) -> None:
        if not self.model_path.is_file():
            raise BadInputError(f"{self.model_path}: ONNX model not found")
        try:
            self._session = ort.InferenceSession(
                str(self.model_path), session_options(self.threads, spin=self.spin), providers=list(self.providers)
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

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._session.get_modelmeta().custom_metadata_map)

    def kv_cache(self, layout: KVLayout, batch: int, capacity: int) -> InPlaceCache | None:
        if self.metadata.get(PADDING_KEY) != "right":  # a traced graph concatenates: nothing to share
            return None
        return InPlaceCache(self._session, layout, batch, capacity)
