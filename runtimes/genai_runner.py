"""onnxruntime-genai: the runtime LLM users deploy a decoder with, run on the bundle's own model file.

A text-generation export writes ``genai_config.json`` beside the bundle's ONNX Runtime model
(``export.genai_config``), so this runtime ships nothing of its own: its bundle model is
``model.int8.onnx``, the fused decoder graph (``export.fused_decoder``: GroupQueryAttention on one
shared past/present buffer), the only graph it generates with here. Its runner drives
``onnxruntime_genai.Generator`` for what a generator does — the greedy continuations and the decode
step (:meth:`GenAIRunner.kv_cache`: the prompt appended, then one token per step on GenAI's own
cache, the logits read back with ``get_output("logits")``) — and answers ``run(feed)`` (a whole
window's logits: perplexity, the prefill latency rows) from an ONNX Runtime session on the same
file: a Generator computes logits only through its own cache, and takes a batch's tokens once.

Lazy import: ``onnxruntime_genai`` is the ``genai`` extra (``pip install 'modelpress[genai]'``).
Deploy-side (``modelpress.deploy_side``): no torch at import time.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from modelpress.errors import BackendUnavailableError, BadInputError
from modelpress.kv_cache import PADDING_KEY, KVLayout
from modelpress.runtimes.artifacts import RuntimeArtifact
from modelpress.runtimes.base import Runner
from modelpress.runtimes.onnxruntime_runner import OnnxRuntimeRunner

CONFIG = "genai_config.json"


def require_genai() -> Any:
    try:
        return importlib.import_module("onnxruntime_genai")
    except ImportError:
        raise BackendUnavailableError(
            "the onnxruntime-genai runtime needs the onnxruntime-genai package: pip install 'modelpress[genai]'"
        ) from None


class GenAIArtifact(RuntimeArtifact):
    """The bundle's ``model.int8.onnx`` and the export's ``genai_config.json``: nothing more to write."""

    runtime = "onnxruntime-genai"

    def require(self, recipe: Any) -> None:
        require_genai()


class GenAICache:
    """A decoder's steps on onnxruntime-genai Generators, one per row: a Generator of a batch takes
    its tokens once and then only the ones it samples itself, while our generator (and the decode
    timing) choose each row's next token. So each row is its own batch-1 Generator of ``capacity``
    tokens (the decode rows at batch > 1 are those Generators stepped in turn)."""

    def __init__(self, og: Any, model: Any, batch: int, capacity: int) -> None:
        self.generators = []
        for _ in range(batch):
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=capacity, do_sample=False)
            self.generators.append(og.Generator(model, params))

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, keep: int = 0) -> np.ndarray:
        """The new tokens [batch, new] (right-padded; each row's length after them in its mask) →
        logits [batch, new, vocab], zero at padding (all ``new``, whatever ``keep`` asks: GenAI feeds
        the graph no ``logits_to_keep``). A row whose Generator already holds tokens past
        where these go is rewound first (the decode timing steps at the same position again)."""
        lengths = np.asarray(attention_mask).sum(1).astype(int)
        new = input_ids.shape[1]
        rows: list[np.ndarray] = []
        for r, generator in enumerate(self.generators):
            start = generator.token_count()
            tokens = input_ids[r, : lengths[r]] if start == 0 else input_ids[r]
            if start > lengths[r] - len(tokens):
                generator.rewind_to(int(lengths[r] - len(tokens)))
            generator.append_tokens(np.ascontiguousarray(tokens, dtype=np.int32)[None])
            rows.append(np.asarray(generator.get_output("logits"))[0])
        out = np.zeros((len(rows), new, rows[0].shape[-1]), np.float32)
        for r, logits in enumerate(rows):
            out[r, : len(logits)] = logits
        return out


class GenAIRunner(Runner):
    """``model_path``: a decoder file with ``genai_config.json`` in its folder (a text-generation
    bundle's); GenAI runs that file whatever the config names."""

    contrib_ops = True
    decoder_graphs = ("fused",)

    def __init__(self, model_path: str | Path, *, threads: int = 0, name: str | None = None) -> None:
        self.model_path = Path(model_path)
        self.threads = threads
        self.name = name or self.model_path.name
        self._session = OnnxRuntimeRunner(self.model_path, threads=threads, name=self.name)
        self._og: Any = None
        self._model: Any = None

    def _overlay(self) -> str:
        """The config's decoder file set to this runner's file, and its threads."""
        options: dict[str, Any] = {}
        if self.threads:
            options.update(intra_op_num_threads=self.threads, inter_op_num_threads=1)
        return json.dumps({"model": {"decoder": {"filename": self.model_path.name, "session_options": options}}})

    def _load(self) -> None:
        og = require_genai()
        if not (self.model_path.parent / CONFIG).is_file():
            raise BadInputError(
                f"{self.model_path.parent}: no {CONFIG} beside {self.model_path.name} "
                "(a text-generation export writes it)"
            )
        self._session._load()  # a missing or broken file is its one line
        if self._session.metadata.get(PADDING_KEY) != "right":
            raise BadInputError(
                f"{self.model_path}: onnxruntime-genai runs the fused decoder graph here "
                '(task_options.decoder_graph = "fused" or "auto")'
            )
        config = og.Config(str(self.model_path.parent))
        config.overlay(self._overlay())
        self._og, self._model = og, og.Model(config)

    def close(self) -> None:
        self._session.close()
        self._model = None

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._session.input_names

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._session.run(feed)

    @property
    def metadata(self) -> dict[str, str]:
        return self._session.metadata

    def kv_cache(self, layout: KVLayout, batch: int, capacity: int) -> GenAICache:
        return GenAICache(self._og, self._model, batch, capacity)
