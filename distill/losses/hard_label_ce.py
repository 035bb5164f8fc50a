"""Hard-label cross-entropy: the ordinary supervised loss on gold labels, mixed with the soft
targets as in Hinton et al. 2015 and DistilBERT (Sanh et al. 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


IGNORE = -100  # a token without a gold label (not a word's first sub-token, special, padding)


def hard_label_ce(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``mean_b −log softmax(student_b)[label_b]``. Inputs: logits ``[batch, classes]`` and labels
    ``[batch]``, or per token ``[batch, seq, classes]`` and ``[batch, seq]`` with ``-100`` where a
    token has no label: each sample's loss is then the mean over its labelled tokens."""
    if student_logits.dim() == 2:
        return F.cross_entropy(student_logits.float(), labels.long())
    per_token = F.cross_entropy(
        student_logits.float().transpose(1, 2), labels.long(), ignore_index=IGNORE, reduction="none"
    )  # [batch, seq], 0 where ignored
    labelled = (labels != IGNORE).float()
    return ((per_token * labelled).sum(dim=-1) / labelled.sum(dim=-1).clamp_min(1.0)).mean()


class HardLabelCELoss(nn.Module):
    def forward(self, student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return hard_label_ce(student_logits, labels)
