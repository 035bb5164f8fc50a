"""Run teacher or student on a batch and keep what the losses compare.

Both sides go through :func:`run_model`, so the teacher's targets and the student's outputs are
computed the same way: the task's sentence-level output (pooled embedding or logits), and, when a
token-level loss needs them, per-layer hidden states and attention probabilities.
:class:`DistillModule` is the trainable unit (student + optional width projection) that DDP wraps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from modelpress.distill.task_view import DistillTaskView

#: what a corpus's collated batch carries beside the model's inputs (whatever the modality feeds)
NOT_MODEL_INPUTS = ("labels", "index")


@dataclass(frozen=True)
class ModelOutputs:
    """What distillation compares, for one batch."""

    sentence: (
        torch.Tensor
    )  # the task's target: [batch, dim] embedding, [batch, classes] or [batch, seq, classes] logits
    hidden_states: tuple[torch.Tensor, ...] | None = None  # output of each layer, [batch, seq, hidden]
    attentions: tuple[torch.Tensor, ...] | None = None  # each layer's [batch, heads, seq, seq]
    mask: torch.Tensor | None = None  # [batch, seq] real tokens, for a per-token ``sentence``

    def detach(self) -> "ModelOutputs":
        return ModelOutputs(
            sentence=self.sentence.detach().float(),
            hidden_states=None if self.hidden_states is None else tuple(h.detach() for h in self.hidden_states),
            attentions=None if self.attentions is None else tuple(a.detach() for a in self.attentions),
            mask=self.mask,
        )


def run_model(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    *,
    spec: DistillTaskView,
    need_hidden: bool = False,
    need_attentions: bool = False,
) -> ModelOutputs:
    """One forward pass of a transformers model, reduced to :class:`ModelOutputs`."""
    feed = {k: v for k, v in inputs.items() if k not in NOT_MODEL_INPUTS}
    # asked for only when wanted: not every model's forward takes them (ResNet has no attentions)
    wanted = {
        k: True for k, on in (("output_hidden_states", need_hidden), ("output_attentions", need_attentions)) if on
    }
    out = model(**feed, **wanted, return_dict=True)
    sentence = spec.target(out, feed)
    hidden = tuple(out.hidden_states[1:]) if need_hidden else None  # [0] is the embedding output
    attentions = tuple(out.attentions) if need_attentions else None
    if need_attentions and (not attentions or any(a is None for a in attentions)):
        raise RuntimeError("model returned no attention probabilities; load it with attn_implementation='eager'")
    mask = feed["attention_mask"] if sentence.dim() == 3 else None
    return ModelOutputs(sentence=sentence, hidden_states=hidden, attentions=attentions, mask=mask)


class DistillModule(nn.Module):
    """The student plus, when its width differs from the teacher's, the linear map that lifts its
    hidden states for the hidden-state loss (TinyBERT's W_h; trained, checkpointed, not exported)."""

    def __init__(
        self,
        student: nn.Module,
        *,
        spec: DistillTaskView,
        teacher_hidden_size: int | None,
        need_hidden: bool,
        need_attentions: bool,
    ) -> None:
        super().__init__()
        self.student = student
        self.spec = spec
        self.need_hidden = need_hidden
        self.need_attentions = need_attentions
        width = getattr(student.config, "hidden_size", None)
        self.projection = (
            nn.Linear(width, teacher_hidden_size) if need_hidden and width != teacher_hidden_size else None
        )

    def student_outputs(self, inputs: Mapping[str, torch.Tensor]) -> ModelOutputs:
        """The student's sentence-level output only (evaluation; bypasses DDP)."""
        return run_model(self.student, inputs, spec=self.spec)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> ModelOutputs:
        out = run_model(
            self.student, inputs, spec=self.spec, need_hidden=self.need_hidden, need_attentions=self.need_attentions
        )
        if self.projection is not None and out.hidden_states is not None:
            out = ModelOutputs(
                sentence=out.sentence,
                attentions=out.attentions,
                mask=out.mask,
                hidden_states=tuple(self.projection(h) for h in out.hidden_states),
            )
        return out
