"""text-classification: one label per text, from a sequence-classification model's ``logits``.

Metrics against the teacher: top-1 agreement, mean KL(teacher ‖ model) (lower is better), and
accuracy against gold labels when the eval set has them (what the gate judges then). Eval format:
``text`` with an integer ``label`` field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from modelpress import task_match
from modelpress.tasks import HIGHER, LOWER, DistillSpec, Task
from modelpress.bundle_base import Bundle
from modelpress.measures import uncertainty as U
from modelpress.measures import metrics as M


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class TextClassification(Task):
    name: ClassVar[str] = "text-classification"
    auto: ClassVar[task_match.AutoSpec] = task_match.AutoSpec(
        architectures=("ForSequenceClassification",), accepts=lambda c: not task_match.is_cross_encoder(c)
    )
    auto_class: ClassVar[str] = "AutoModelForSequenceClassification"
    output_name: ClassVar[str] = "logits"
    metrics: ClassVar[Mapping[str, str]] = {"top1_agreement": HIGHER, "mean_kl": LOWER, "accuracy": HIGHER}
    eval_formats: ClassVar[tuple[str, ...]] = ("text",)
    eval_record: ClassVar[str] = "modelpress.tasks.evalsets:TextSet"
    distill: ClassVar[DistillSpec] = DistillSpec(
        output="logits",
        losses=frozenset({"kl", "ce", "hidden_mse", "attention_kl"}),
        defaults={"kl": 1.0},
        label_loss="ce",
    )
    needs_labels: ClassVar[bool] = True
    api: ClassVar[tuple[str, ...]] = ("classify",)
    unit: ClassVar[str] = "texts"  # what the gate's interval resamples

    def torch_target(self, model_output: Any, inputs: Mapping[str, Any]) -> Any:
        return model_output.logits

    def reference_metrics(self, teacher_out: np.ndarray, es: Any) -> dict[str, float]:
        return M.classification_reference_metrics(teacher_out, es.labels)

    def fidelity(self, teacher_out: np.ndarray, candidate_out: np.ndarray, es: Any) -> dict[str, float]:
        return M.classification_metrics(teacher_out, candidate_out, es.labels)

    def paired_units(self, metric: str, teacher_out: np.ndarray, candidate_out: np.ndarray, es: Any):
        t, c = teacher_out.argmax(-1), candidate_out.argmax(-1)
        if metric == "accuracy" and es.labels is not None:
            gold = np.asarray(es.labels)
            tr, cr = t == gold, c == gold
            return U.PairedUnits(
                U.as_arrays(tr, cr),
                U.paired_mean_drop(),
                self.unit,
                discordant=(int((tr & ~cr).sum()), int((~tr & cr).sum())),
            )
        if metric == "top1_agreement":
            return U.PairedUnits(U.as_arrays(t == c), U.mean_drop(), self.unit)
        if metric == "mean_kl":
            return U.PairedUnits(U.as_arrays(M.kl_per_row(teacher_out, candidate_out)), U.mean_rise(), self.unit)
        return None

    @classmethod
    def primary_metric(cls, available: set[str]) -> str:
        return "accuracy" if "accuracy" in available else "top1_agreement"

    @classmethod
    def bundle_class(cls) -> type:
        class ClassifierBundle(Bundle):
            def classify(self, texts: str | Sequence[str], *, batch_size: int = 32) -> np.ndarray:
                """Class probabilities, [n_texts, n_classes] (a single string gives [1, n_classes];
                no texts, [0, n_classes])."""
                texts = self._texts(texts)
                # no texts: one empty text's run gives the width, so the result is [0, n_classes]
                return softmax(self.predict(texts or [""], batch_size=batch_size))[: len(texts)]

            @property
            def labels(self) -> list[str]:
                """Class names by index, from the model's config."""
                return self.label_names()

        return ClassifierBundle
