"""What distillation knows of a task: a view of the task registry's entry (``modelpress.tasks``).

The configured task says which Auto class loads teacher and student, what is compared (its
``torch_target``: a pooled embedding, class logits, token logits), which losses apply and which
are on by default. There is no per-task branching in this package: everything asks the spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from modelpress.errors import BadInputError
from modelpress.tasks import Task, configure_task


@dataclass(frozen=True)
class DistillTaskView:
    task: Task  # the configured task (feature extraction: its pooling and normalization)

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def auto_class(self) -> str:
        return self.task.auto_class

    @property
    def sentence_output(self) -> str:
        """The kind of the compared output: "embedding" | "logits" | "token_logits"."""
        return self.task.distill.output

    @property
    def per_token_target(self) -> bool:
        """Whether the compared output has a row per token (not cached: the teacher runs live)."""
        return self.sentence_output == "token_logits"

    @property
    def losses(self) -> frozenset[str]:
        return self.task.distill.losses

    @property
    def has_labels(self) -> bool:
        """Whether the model carries a label space (a classifier head the student must keep)."""
        return self.task.needs_labels

    def target(self, model_output: Any, inputs: Mapping[str, Any]) -> Any:
        return self.task.torch_target(model_output, inputs)  # type: ignore[attr-defined]  # every distillable task has it

    def describe(self) -> dict[str, Any]:
        return self.task.describe()

    def resolve_weights(self, weights: Any, *, has_labels: bool) -> dict[str, float]:
        """The effective weight of every loss; errors name the recipe key that cannot apply."""
        spec = self.task.distill
        defaults = dict(spec.defaults)
        if spec.label_loss is not None and has_labels:
            defaults[spec.label_loss] = 1.0
        resolved = weights.resolve(defaults)
        for name, weight in resolved.items():
            if weight > 0 and name not in spec.losses:
                raise BadInputError(
                    f"distill.losses.{name}: does not apply to {self.name} "
                    f"(applicable: {', '.join(sorted(spec.losses))})"
                )
        if spec.label_loss is not None and resolved[spec.label_loss] > 0 and not has_labels:
            raise BadInputError(f"distill.losses.{spec.label_loss}: needs gold labels; set distill.label_field")
        if not any(w > 0 for w in resolved.values()):
            raise BadInputError("distill.losses: every loss weight is 0; nothing to train")
        return resolved


def distill_view(
    name: str, options: Mapping[str, Any] | None = None, *, model_dir: str | Path | None = None
) -> DistillTaskView:
    """The distillation view of the task ``name``, configured with its ``[task_options]``."""
    return DistillTaskView(configure_task(name, options, model_dir=model_dir))
