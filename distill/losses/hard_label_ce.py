"""Hard-label cross-entropy: the ordinary supervised loss on gold labels, mixed with the soft
targets as in Hinton et al. 2015 and DistilBERT (Sanh et al. 2019)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def hard_label_ce(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``mean_b −log softmax(student_b)[label_b]``. Inputs: logits ``[batch, classes]``, labels ``[batch]`` (int)."""
    return F.cross_entropy(student_logits.float(), labels.long())


class HardLabelCELoss(nn.Module):
    def forward(self, student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return hard_label_ce(student_logits, labels)
