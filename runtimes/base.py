"""The one interface every backend implements; validation and benchmarks only ever see runners.

A runner is created from a file (or an in-memory model), is a context manager, knows its input
names, and maps a feed of numpy arrays to a dict of numpy outputs. Shaped after Polygraphy's
``polygraphy/backend/*/runner.py``.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Mapping

import numpy as np
from modelpress.fileio import fed_inputs, load_onnx


class Runner(abc.ABC):
    """Runs one model on one backend. Subclasses implement ``_load``, ``run`` and ``input_names``."""

    #: short human-readable label used in reports and benchmark tables
    name: str = "runner"
    #: whether it runs ONNX Runtime's ``com.microsoft`` operators (MatMulNBits of weight-only int4/int8,
    #: GroupQueryAttention of the fused decoder graph); the recipe checks ask this, never the runtime's name
    contrib_ops: ClassVar[bool] = False
    #: the text-generation graphs it generates with (``task_options.decoder_graph``: "traced", "fused")
    decoder_graphs: ClassVar[tuple[str, ...]] = ("traced",)
    #: runner options for a caller that runs the model back to back (a decode loop: one run per new token),
    #: where waking idle worker threads for each of a step's few hundred small kernels costs more than the
    #: kernels save (ONNX Runtime: its threads keep spinning between runs, its own default)
    back_to_back_options: ClassVar[dict[str, Any]] = {}

    @classmethod
    def options_from(cls, validate_cfg) -> dict:
        """What ``[validate]`` says to this runtime's runners beyond threads (none by default)."""
        return {}

    @classmethod
    def graph_inputs(cls, path) -> tuple[str, ...]:
        """The input names of a model file this runtime loads, read without running it (ONNX here)."""

        return tuple(i.name for i in fed_inputs(load_onnx(path, load_external_data=False).graph))

    def __enter__(self) -> "Runner":
        self._load()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abc.abstractmethod
    def _load(self) -> None:
        """Create the session / engine; called on ``__enter__``."""

    def close(self) -> None:
        """Release the session / engine. Idempotent."""

    @property
    @abc.abstractmethod
    def input_names(self) -> tuple[str, ...]:
        """Names of the inputs the model takes (a subset of what a tokenizer produces)."""

    @abc.abstractmethod
    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One forward pass. ``feed`` may hold extra keys; only ``input_names`` are used."""

    @property
    def metadata(self) -> dict[str, str]:
        """The model file's metadata (key → value; none by default)."""
        return {}

    def kv_cache(self, layout: Any, batch: int, capacity: int) -> Any:
        """A decoder that updates a KV cache of ``capacity`` positions in place
        (``onnxruntime_runner.InPlaceCache``), or None: this runtime feeds the past and gets a
        longer present each step."""
        return None

    def select(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The part of ``feed`` this model takes (tokenizers also emit e.g. token_type_ids)."""
        return {k: feed[k] for k in self.input_names if k in feed}
