"""The deployable bundle's Python API: ``load(bundle_dir)`` → embed / classify raw strings.

Uses the bundle's own files only (int8 ONNX model, tokenizer folder, head settings from
bundle.json), through the same Predictor path validation measures.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from modelpress.errors import BadInputError
from modelpress.inference import Predictor
from modelpress.tasks import head_from_dict
from modelpress.runtimes.onnxruntime_runner import OnnxRuntimeRunner

BUNDLE_META = "bundle.json"


def write_bundle_meta(root: Path, *, head: dict, input_names: Sequence[str], max_length: int) -> None:
    meta = {"head": head, "input_names": list(input_names), "max_length": max_length}
    (root / BUNDLE_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


class Bundle(Predictor):
    """A loaded bundle. Use as a context manager or call ``close()``; ``embed``/``classify`` take strings."""

    def __init__(self, root: Path, *, model_file: str = "model.int8.onnx", threads: int = 0):
        from transformers import AutoTokenizer

        self.root = Path(root)
        meta_path = self.root / BUNDLE_META
        if not meta_path.is_file():
            raise BadInputError(f"{self.root}: not a modelpress bundle (no {BUNDLE_META})")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tokenizer = AutoTokenizer.from_pretrained(str(self.root / "tokenizer"))
        runner = OnnxRuntimeRunner(self.root / model_file, threads=threads, name=model_file)
        runner.__enter__()
        super().__init__(runner, head_from_dict(meta["head"]), tokenizer, max_length=int(meta["max_length"]),
                         name="int8" if model_file == "model.int8.onnx" else model_file)

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.runner.close()

    def embed(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        if self.head.task != "feature-extraction":
            raise BadInputError(f"this bundle is a {self.head.task} model; use classify()")
        return self.predict(texts, batch_size=batch_size)

    def classify(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """Class probabilities, [n_texts, n_classes]."""
        if self.head.task != "text-classification":
            raise BadInputError(f"this bundle is a {self.head.task} model; use embed()")
        logits = self.predict(texts, batch_size=batch_size)
        z = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)


def load(bundle_dir: str | Path, *, model_file: str = "model.int8.onnx", threads: int = 0) -> Bundle:
    return Bundle(Path(bundle_dir), model_file=model_file, threads=threads)
