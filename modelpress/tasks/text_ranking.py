"""text-ranking: cross-encoders (rerankers) that score a query and a passage read together, from a
sequence-classification model's ``logits`` on text pairs (the ``text-pairs`` modality).

The score of a pair, as sentence-transformers' ``CrossEncoder`` gives it: a one-label model's raw
logit; a model with several labels (NLI-style) ranks by the softmax probability of one class,
``[task_options] score_class`` (its name or index: the recipe must say which, there is no safe
default). Passages are ranked by score, highest first.

Metrics (``modelpress.tasks.ranking``): Spearman and Pearson against gold scores (``pairs``,
``stsb``), NDCG@10 and MRR@10 against graded relevance (``ranking``), top-1 agreement and Kendall's
τ per query and the score MSE against the teacher. The gate judges Spearman, else NDCG@10, else
top-1 agreement, else the score MSE. Calibration reads pairs (``modelpress.modalities.text.load_pairs``:
a plain-text corpus pairs each text with the next). Distillation regresses the teacher's logits
(``embedding_mse`` on the logits: the score MSE of a one-label model; ``kl`` for classifiers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from modelpress import task_match
from modelpress.errors import BadInputError
from modelpress.tasks import HIGHER, LOWER, DistillSpec, MetricSpec, Task
from modelpress.tasks.text_classification import softmax
from modelpress.bundle_base import Bundle
from modelpress.measures import uncertainty as U
from modelpress.modalities.text import TextPair
from modelpress.tasks.ranking import load_ranking_set, ranking_metrics, reference_metrics
from modelpress.tasks import ranking as R


def resolve_score_class(value: int | str | None, labels: Sequence[str]) -> int:
    """The index of the class whose probability is the score, for a model with ``labels``
    (a one-label model's score is its logit: index 0)."""
    if len(labels) == 1 and value in (None, 0, labels[0]):
        return 0
    known = ", ".join(f"{i}: {name}" for i, name in enumerate(labels))
    if len(labels) == 1:
        raise BadInputError(f"task_options.score_class: the model gives one score (its logit); remove {value!r}")
    if value is None:
        raise BadInputError(
            f"task_options.score_class: the model has {len(labels)} classes ({known}); name the one "
            "whose probability is the relevance score"
        )
    if isinstance(value, str) and value in labels:
        return list(labels).index(value)
    if isinstance(value, int) and 0 <= value < len(labels):
        return value
    raise BadInputError(f"task_options.score_class: {value!r} is not a class of the model ({known})")


def config_labels(model_dir: str | Path) -> list[str] | None:
    """The class names by index that a model folder's config.json declares (None: no config)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text(encoding="utf-8"))
    id2label = config.get("id2label") or {}
    count = int(config.get("num_labels", len(id2label) or 2))  # transformers' default head has 2 labels
    return [str(id2label.get(str(i), f"LABEL_{i}")) for i in range(count)]


@dataclass(frozen=True)
class TextRanking(Task):
    score_class: int | str | None = field(
        default=None, metadata={"expected": "a class name or index"}
    )  # num_labels > 1: the class (name or index) whose probability is the score

    name: ClassVar[str] = "text-ranking"
    #: a cross-encoder (task_match.is_cross_encoder); STS pairs to evaluate on by default
    auto: ClassVar[task_match.AutoSpec] = task_match.AutoSpec(
        architectures=("ForSequenceClassification",),
        accepts=task_match.is_cross_encoder,
        eval_data="calibration_data/en_sts_eval.jsonl",
    )
    modality: ClassVar[str] = "text-pairs"
    auto_class: ClassVar[str] = "AutoModelForSequenceClassification"
    output_name: ClassVar[str] = "logits"
    metrics: ClassVar[Mapping[str, str]] = {
        "spearman": HIGHER,
        "pearson": HIGHER,
        "ndcg_at_10": HIGHER,
        "mrr_at_10": HIGHER,
        "top1_agreement": HIGHER,
        "kendall_tau": HIGHER,
        "score_mse": LOWER,
    }
    eval_formats: ClassVar[tuple[str, ...]] = ("pairs", "stsb", "ranking")
    eval_record: ClassVar[str] = "modelpress.tasks.ranking:RankingSet"
    # "scores": the held-out check is the score MSE (agreement of a single logit's argmax means nothing)
    distill: ClassVar[DistillSpec] = DistillSpec(
        output="scores",
        losses=frozenset({"embedding_mse", "kl", "hidden_mse", "attention_kl"}),
        defaults={"embedding_mse": 1.0},
    )
    needs_labels: ClassVar[bool] = True  # a head with its label count, copied into students
    api: ClassVar[tuple[str, ...]] = ("rank", "score")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.score_class is not None and (
            isinstance(self.score_class, bool) or not isinstance(self.score_class, (int, str))
        ):
            raise BadInputError(f"task_options.score_class: expected a class name or index, got {self.score_class!r}")

    @classmethod
    def configure(cls, options: Mapping[str, Any], model_dir: str | Path | None) -> "TextRanking":
        value = options.get("score_class")
        cls(score_class=value)  # checks the type
        labels = config_labels(model_dir) if model_dir else None
        # without the folder (a recipe checked alone, a hub id) the value waits for the model's config
        return cls(score_class=value if labels is None else resolve_score_class(value, labels))

    def heldout_metric(self) -> Any:
        """The score MSE: agreement of a single logit's argmax means nothing."""
        return MetricSpec(("mse",), _score_sums, lambda m: (-m["mse"],))

    # -- inference ------------------------------------------------------------------------------
    def prepare(self, examples: Sequence[Any]) -> list[Any]:
        return [TextPair(*e) for e in examples]

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """One score per pair, [n], from the logits [n, labels]."""
        logits = np.asarray(logits, dtype=np.float32)
        if logits.shape[-1] == 1:
            return logits[:, 0]
        return softmax(logits)[:, resolve_score_class(self.score_class, [str(i) for i in range(logits.shape[-1])])]

    def torch_target(self, model_output: Any, inputs: Mapping[str, Any]) -> Any:
        return model_output.logits

    # -- evaluation -------------------------------------------------------------------------------
    def read_eval(self, path: str | Path, cfg: Any, *, model_config: Any = None, preprocessor: Any = None):
        if model_config is not None:  # the loaded model's head: the score class must be one of its classes
            id2label = getattr(model_config, "id2label", None) or {}
            labels = [str(id2label.get(i, i)) for i in range(int(getattr(model_config, "num_labels", 1)))]
            index = resolve_score_class(self.score_class, labels)
            if isinstance(self.score_class, str) and len(labels) > 1:
                raise BadInputError(
                    f"task_options.score_class: name the class by its index for a model that is "
                    f"not a local folder ({self.score_class!r} is {index})"
                )
        return load_ranking_set(
            path,
            fmt=cfg.eval_format,
            text_field=cfg.text_field,
            label_field=cfg.label_field,
            num_samples=cfg.num_samples,
        )

    def reference_metrics(self, teacher_out: np.ndarray, es: Any) -> dict[str, float]:
        return reference_metrics(self.scores(teacher_out), es)

    def fidelity(self, teacher_out: np.ndarray, candidate_out: np.ndarray, es: Any) -> dict[str, float]:
        return ranking_metrics(self.scores(teacher_out), self.scores(candidate_out), es)

    def paired_units(self, metric: str, teacher_out: np.ndarray, candidate_out: np.ndarray, es: Any):
        t, c = self.scores(teacher_out), self.scores(candidate_out)
        if metric in ("spearman", "pearson") and es.gold is not None and not es.graded:
            stat = U.spearman_drop() if metric == "spearman" else R.pearson_drop()
            return U.PairedUnits(U.as_arrays(t, c, es.gold), stat, "pairs")
        if metric in ("ndcg_at_10", "mrr_at_10") and es.graded:
            measure = R.ndcg_at_k if metric == "ndcg_at_10" else R.mrr_at_k
            return U.PairedUnits(
                U.as_arrays(R.graded_per_query(t, es, measure), R.graded_per_query(c, es, measure)),
                U.paired_mean_drop(),
                "queries",
            )
        if metric == "top1_agreement" and es.ranked:
            return U.PairedUnits(U.as_arrays(R.top1_agreements(t, c, es)), U.mean_drop(), "queries")
        if metric == "kendall_tau" and len(taus := R.kendall_taus(t, c, es)):
            return U.PairedUnits(U.as_arrays(taus), U.mean_drop(), "queries")
        if metric == "score_mse":
            return U.PairedUnits(U.as_arrays((c.astype(np.float64) - t) ** 2), U.mean_rise(), "pairs")
        return None

    @classmethod
    def primary_metric(cls, available: set[str]) -> str:
        return next(m for m in ("spearman", "ndcg_at_10", "top1_agreement", "score_mse") if m in available)

    # -- the bundle ---------------------------------------------------------------------------------
    @classmethod
    def bundle_class(cls) -> type:
        class RerankerBundle(Bundle):
            def score(
                self, pairs: Sequence[Sequence[str]], *, batch_size: int = 32, sigmoid: bool = False
            ) -> np.ndarray:
                """One relevance score per (query, passage) pair, [n] (one pair given as a tuple of two
                strings gives [1]): a one-label model's raw logit (``sigmoid=True``: in (0, 1)), or a
                classifier's softmax probability of ``score_class``. ``predict(pairs)`` gives the
                logits of every class."""
                pairs = self.task.prepare(_pairs(pairs, "score()"))
                if not pairs:
                    return np.zeros((0,), dtype=np.float32)
                logits = self.predict(pairs, batch_size=batch_size)
                if sigmoid and logits.shape[-1] != 1:
                    raise BadInputError("score(sigmoid=True): this model's score is already a class probability")
                scores = self.task.scores(logits)
                return 1.0 / (1.0 + np.exp(-scores)) if sigmoid else scores

            def rank(
                self, query: str, passages: str | Sequence[str], *, top_k: int | None = None, batch_size: int = 32
            ) -> list[dict[str, Any]]:
                """The passages by score, highest first (ties in the given order), each as
                ``{"index": its position in passages, "score": ..., "passage": ...}``; ``top_k``
                keeps the first k."""
                if not isinstance(query, str):
                    raise TypeError(f"rank(): query must be a string, got {type(query).__name__}")
                passages = [passages] if isinstance(passages, str) else list(passages)
                for i, passage in enumerate(passages):
                    if not isinstance(passage, str):
                        raise TypeError(f"rank(): passages[{i}] must be a string, got {type(passage).__name__}")
                scores = self.score([(query, p) for p in passages], batch_size=batch_size)
                order = np.argsort(-scores, kind="stable")[:top_k]
                return [{"index": int(i), "score": float(scores[i]), "passage": passages[i]} for i in order]

        return RerankerBundle


def _pairs(pairs: Any, where: str) -> list[tuple[str, str]]:
    """A list of (query, passage) pairs: a tuple of two strings is one pair; anything that is not
    pairs of strings is a TypeError naming the argument."""
    if isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(t, str) for t in pairs):
        return [pairs]
    if isinstance(pairs, (str, bytes, Mapping)) or not hasattr(pairs, "__iter__"):
        raise TypeError(f"{where}: pairs must be a list of (query, passage) pairs, got {type(pairs).__name__}")
    out = list(pairs)
    for i, pair in enumerate(out):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise TypeError(f"{where}: pairs[{i}] must be a (query, passage) pair of strings, got {pair!r:.60}")
    return out


def _score_sums(student: Any, teacher: Any) -> Any:
    """Per pair, the squared difference of the scores (the logits); summed over the batch (torch)."""
    return (student.sentence.float() - teacher.sentence.float()).pow(2).mean(dim=-1).sum().reshape(1)
