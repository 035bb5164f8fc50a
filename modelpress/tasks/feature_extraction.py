"""feature-extraction: sentence embeddings, pooled from ``last_hidden_state`` (sentence-transformers).

Pooling (mean over real tokens, or the first token) and L2 normalization follow the model
folder's sentence-transformers files unless ``[task_options]`` says otherwise. Metrics against the
teacher: cosine per text (mean, min), nearest-neighbour agreement within the eval set, and the
Spearman correlation of pair similarities with gold scores when the eval set has them (what the
gate judges then). Eval formats: ``text``, ``pairs``, ``stsb``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from modelpress import task_match
from modelpress.errors import BadInputError
from modelpress.tasks import HIGHER, DistillSpec, Task
from modelpress.bundle_base import Bundle
from modelpress.measures import uncertainty as U
from modelpress.measures import metrics as M

POOLINGS = ("auto", "mean", "cls")


def pool(hidden: Any, attention_mask: Any, *, pooling: str, normalize: bool) -> Any:
    """Sentence embeddings from token states [batch, seq, dim]; numpy arrays or torch tensors alike
    (the numpy head, distillation's torch side and the GPU check share this one definition)."""
    as_float = getattr(hidden, "float", None)
    hidden = as_float() if as_float is not None else hidden.astype(np.float32)
    if pooling == "cls":
        emb = hidden[:, 0]
    else:
        mask = attention_mask[..., None]
        mask = mask.float() if hasattr(mask, "float") else mask.astype(np.float32)
        emb = (hidden * mask).sum(1) / mask.sum(1).clip(min=1e-9)
    if normalize:
        emb = emb / ((emb * emb).sum(-1)[..., None] ** 0.5).clip(min=1e-12)
    return emb


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


@dataclass(frozen=True)
class FeatureExtraction(Task):
    pooling: str = "mean"  # "mean" | "cls" ("auto" in a recipe: the sentence-transformers config, else mean)
    normalize: bool | None = True  # L2-normalize (None in a recipe: as the sentence-transformers config says)

    name: ClassVar[str] = "feature-extraction"
    #: a bare encoder (BertModel, ...); any longer suffix (LMHeadModel, ForXxx) belongs to another task
    auto: ClassVar[task_match.AutoSpec] = task_match.AutoSpec(architectures=("Model",))
    auto_class: ClassVar[str] = "AutoModel"
    output_name: ClassVar[str] = "last_hidden_state"
    metrics: ClassVar[Mapping[str, str]] = {
        "mean_cosine": HIGHER,
        "min_cosine": HIGHER,
        "nn_agreement": HIGHER,
        "spearman": HIGHER,
    }
    eval_formats: ClassVar[tuple[str, ...]] = ("text", "pairs", "stsb")
    eval_record: ClassVar[str] = "modelpress.tasks.evalsets:TextSet"
    distill: ClassVar[DistillSpec] = DistillSpec(
        output="embedding",
        losses=frozenset({"embedding_mse", "embedding_cos", "similarity_mse", "hidden_mse", "attention_kl"}),
        defaults={"embedding_mse": 1.0, "embedding_cos": 1.0},
    )
    api: ClassVar[tuple[str, ...]] = ("embed",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling not in POOLINGS:
            raise BadInputError(f"task_options.pooling: expected one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.normalize is not None and not isinstance(self.normalize, bool):
            raise BadInputError(f"task_options.normalize: expected true or false, got {self.normalize!r}")

    @classmethod
    def configure(cls, options: Mapping[str, Any], model_dir: str | Path | None) -> "FeatureExtraction":
        pooling, normalize = options.get("pooling", "auto"), options.get("normalize")
        cls(pooling=pooling, normalize=normalize)  # checks the values
        st_pooling, st_normalize = sentence_transformers_pooling(model_dir) if model_dir else (None, None)
        return cls(
            pooling=pooling if pooling != "auto" else (st_pooling or "mean"),
            normalize=normalize if normalize is not None else bool(st_normalize),
        )

    def postprocess(self, outputs: Mapping[str, np.ndarray], batch: Any) -> np.ndarray:
        return pool(
            outputs[self.output_name],
            batch.feed["attention_mask"],
            pooling=self.pooling,
            normalize=bool(self.normalize),
        )

    def torch_target(self, model_output: Any, inputs: Mapping[str, Any]) -> Any:
        """What distillation compares: the pooled embedding, in torch."""
        return pool(
            model_output.last_hidden_state,
            inputs["attention_mask"],
            pooling=self.pooling,
            normalize=bool(self.normalize),
        )

    def reference_metrics(self, teacher_out: np.ndarray, es: Any) -> dict[str, float]:
        return M.embedding_reference_metrics(teacher_out, es.pairs)

    def fidelity(self, teacher_out: np.ndarray, candidate_out: np.ndarray, es: Any) -> dict[str, float]:
        return M.embedding_metrics(teacher_out, candidate_out, es.pairs)

    def paired_units(self, metric: str, teacher_out: np.ndarray, candidate_out: np.ndarray, es: Any):
        if metric == "spearman" and es.pairs:
            i, j, gold = (np.array(col) for col in zip(*es.pairs))
            t, c = M.unit(teacher_out), M.unit(candidate_out)
            return U.PairedUnits(
                U.as_arrays((t[i] * t[j]).sum(1), (c[i] * c[j]).sum(1), gold), U.spearman_drop(), "pairs"
            )
        cos = (M.unit(teacher_out) * M.unit(candidate_out)).sum(axis=1)
        if metric == "mean_cosine":
            return U.PairedUnits(U.as_arrays(cos), U.mean_drop(), "texts")
        if metric == "nn_agreement" and len(cos) > 2:
            same = M.nearest_neighbours(teacher_out) == M.nearest_neighbours(candidate_out)
            return U.PairedUnits(U.as_arrays(same), U.mean_drop(), "texts")
        return None

    @classmethod
    def primary_metric(cls, available: set[str]) -> str:
        return "spearman" if "spearman" in available else "mean_cosine"

    @classmethod
    def bundle_class(cls) -> type:
        class EmbeddingBundle(Bundle):
            def embed(self, texts: str | Sequence[str], *, batch_size: int = 32) -> np.ndarray:
                """Sentence embeddings, [n_texts, dim] (a single string gives [1, dim]; no texts, [0, dim])."""
                texts = self._texts(texts)
                # no texts: one empty text's run gives the width, so the result is [0, dim] as for any count
                return self.predict(texts or [""], batch_size=batch_size)[: len(texts)]

        return EmbeddingBundle
