"""Soft-target distillation loss for classifiers (Hinton, Vinyals & Dean 2015, "Distilling the
Knowledge in a Neural Network"; the same form as sentence-transformers' ``DistillKLDivLoss``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_target_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``T² · mean_b KL(softmax(teacher_b / T) || softmax(student_b / T))``.

    Inputs: logits ``[batch, classes]``, or per token ``[batch, seq, classes]`` with ``mask``
    ``[batch, seq]`` (1 on real tokens): each sample's KL is then the mean over its real tokens,
    so padding and batch composition do not change its weight. The T² factor keeps the gradient
    scale of the soft targets independent of the temperature. Returns a scalar.
    """
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    per_item = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)
    if per_item.dim() == 2:
        m = mask.float() if mask is not None else torch.ones_like(per_item)
        per_item = (per_item * m).sum(dim=-1) / m.sum(dim=-1).clamp_min(1.0)
    return per_item.mean() * (t * t)


class SoftTargetKLLoss(nn.Module):
    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return soft_target_kl(student_logits, teacher_logits, self.temperature)
