"""Per-task facts the distiller needs, as registered specs (no ``if task == ...`` ladders elsewhere).

A task says which transformers Auto class loads the teacher and the student, what its
sentence-level output is (a pooled embedding or classification logits), which losses apply and
which are on by default. ``get_task(name)`` raises :class:`BadInputError` listing known tasks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from modelpress.errors import BadInputError

POOLINGS = ("mean", "cls")


@dataclass(frozen=True)
class TaskOptions:
    """Options of a feature-extraction task (ignored by classification)."""

    pooling: str = "mean"  # mean over non-padding tokens, or the first ([CLS]) token
    normalize: bool = True  # L2-normalise the pooled embedding


@dataclass(frozen=True)
class TaskSpec:
    """What distillation needs to know about one task."""

    name: str
    auto_class: str  # attribute of ``transformers`` that loads teacher and student
    sentence_output: str  # "embedding" (pooled hidden states) or "logits"
    losses: frozenset[str]  # losses that apply to this task
    default_weights: Mapping[str, float] = field(default_factory=dict)

    def parse_options(self, options: Mapping[str, Any] | None) -> TaskOptions:
        options = dict(options or {})
        if self.sentence_output != "embedding":
            return TaskOptions()
        unknown = sorted(set(options) - {"pooling", "normalize"})
        if unknown:
            raise BadInputError(f"task option '{unknown[0]}': unknown for {self.name}")
        pooling = options.get("pooling", "mean")
        if pooling not in POOLINGS:
            raise BadInputError(f"task option 'pooling': expected one of {', '.join(POOLINGS)}, got {pooling!r}")
        normalize = options.get("normalize", True)
        if not isinstance(normalize, bool):
            raise BadInputError(f"task option 'normalize': expected true or false, got {normalize!r}")
        return TaskOptions(pooling=pooling, normalize=normalize)

    def resolve_weights(self, weights: Any, *, has_labels: bool) -> dict[str, float]:
        """The effective weight of every loss; errors name the recipe key that cannot apply."""
        defaults = dict(self.default_weights)
        if "ce" in self.losses and has_labels:
            defaults["ce"] = 1.0
        resolved = weights.resolve(defaults)
        for name, weight in resolved.items():
            if weight > 0 and name not in self.losses:
                raise BadInputError(
                    f"distill.losses.{name}: does not apply to {self.name} "
                    f"(applicable: {', '.join(sorted(self.losses))})"
                )
        if resolved["ce"] > 0 and not has_labels:
            raise BadInputError("distill.losses.ce: needs gold labels; set distill.label_field")
        if not any(w > 0 for w in resolved.values()):
            raise BadInputError("distill.losses: every loss weight is 0; nothing to train")
        return resolved


_TOKEN_LOSSES = frozenset({"hidden_mse", "attention_kl"})

TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    TASKS[spec.name] = spec
    return spec


register_task(TaskSpec(
    name="feature-extraction",
    auto_class="AutoModel",
    sentence_output="embedding",
    losses=frozenset({"embedding_mse", "embedding_cos", "similarity_mse"}) | _TOKEN_LOSSES,
    default_weights={"embedding_mse": 1.0, "embedding_cos": 1.0},
))
register_task(TaskSpec(
    name="text-classification",
    auto_class="AutoModelForSequenceClassification",
    sentence_output="logits",
    losses=frozenset({"kl", "ce"}) | _TOKEN_LOSSES,
    default_weights={"kl": 1.0},
))


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise BadInputError(f"task '{name}': distillation supports {', '.join(sorted(TASKS))}") from None
