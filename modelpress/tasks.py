"""Task heads: what a task's raw model outputs become (pooled embeddings, logits), and its metrics.

One small object per task, registered by name; the exporter asks a head which model class to
load and which output to export, validation asks it how to post-process outputs and which
metric gates. A head works on numpy arrays, so the same code serves the PyTorch teacher, the
ONNX Runtime candidate and a TensorRT engine.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from modelpress.errors import BadInputError


@dataclass(frozen=True)
class FeatureExtractionHead:
    """Sentence embeddings from ``last_hidden_state`` (sentence-transformers pooling)."""

    pooling: str = "mean"      # "mean" | "cls"
    normalize: bool = True
    task: str = "feature-extraction"
    output_name: str = "last_hidden_state"
    auto_class: str = "AutoModel"

    def __call__(self, outputs: Mapping[str, np.ndarray], attention_mask: np.ndarray) -> np.ndarray:
        hidden = outputs[self.output_name].astype(np.float32)
        if self.pooling == "cls":
            emb = hidden[:, 0]
        else:
            m = attention_mask[..., None].astype(np.float32)
            emb = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        if self.normalize:
            emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
        return emb

    def torch_output(self, model_output):
        return model_output.last_hidden_state

    def describe(self) -> dict:
        return {"task": self.task, "pooling": self.pooling, "normalize": self.normalize}


@dataclass(frozen=True)
class TextClassificationHead:
    """Class logits from a sequence-classification model."""

    task: str = "text-classification"
    output_name: str = "logits"
    auto_class: str = "AutoModelForSequenceClassification"

    def __call__(self, outputs: Mapping[str, np.ndarray], attention_mask: np.ndarray) -> np.ndarray:
        return outputs[self.output_name].astype(np.float32)

    def torch_output(self, model_output):
        return model_output.logits

    def describe(self) -> dict:
        return {"task": self.task}


def sentence_transformers_pooling(model_dir: str | Path) -> tuple[str | None, bool | None]:
    """(pooling, normalize) as a sentence-transformers folder declares them; (None, None) if absent."""
    folder = Path(model_dir)
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None, None
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    pooling, normalize = None, False
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            cfg_file = folder / module.get("path", "") / "config.json"
            if cfg_file.is_file():
                cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
                if cfg.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif cfg.get("pooling_mode_mean_tokens"):
                    pooling = "mean"
        elif kind.endswith("Normalize"):
            normalize = True
    return pooling, normalize


def _feature_extraction(model_dir: str | Path | None, options) -> FeatureExtractionHead:
    st_pooling, st_normalize = sentence_transformers_pooling(model_dir) if model_dir else (None, None)
    pooling = options.pooling if options.pooling != "auto" else (st_pooling or "mean")
    normalize = options.normalize if options.normalize is not None else bool(st_normalize)
    return FeatureExtractionHead(pooling=pooling, normalize=normalize)


def _text_classification(model_dir, options) -> TextClassificationHead:
    return TextClassificationHead()


HEADS: dict[str, Callable] = {
    "feature-extraction": _feature_extraction,
    "text-classification": _text_classification,
}


def make_head(task: str, *, model_dir: str | Path | None = None, options=None):
    """The head for ``task``; ``model_dir`` lets feature extraction read sentence-transformers files."""
    from modelpress.recipe import TaskConfig

    if task not in HEADS:
        raise BadInputError(f"task {task!r} is not supported; known tasks: {', '.join(sorted(HEADS))}")
    return HEADS[task](model_dir, options or TaskConfig())


def head_from_dict(d: Mapping) -> FeatureExtractionHead | TextClassificationHead:
    """Rebuild a head from its ``describe()`` dict (stored in a bundle's manifest)."""
    if d.get("task") == "feature-extraction":
        return FeatureExtractionHead(pooling=d.get("pooling", "mean"), normalize=bool(d.get("normalize", True)))
    if d.get("task") == "text-classification":
        return TextClassificationHead()
    raise BadInputError(f"unknown task in bundle metadata: {d.get('task')!r}")
