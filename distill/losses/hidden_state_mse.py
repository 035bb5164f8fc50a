"""Hidden-state MSE per mapped layer (TinyBERT, Jiao et al. 2020, "TinyBERT: Distilling BERT for
Natural Language Understanding", eq. 8). When the student is narrower, a learned linear map
(held by the trainer, not exported) lifts its hidden states to the teacher's width first."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def hidden_state_mse(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Mean over layers and samples of each sample's MSE over its real (non-padding) tokens.

    Inputs: per mapped layer a pair ``[batch, seq, hidden]`` (student already projected to the
    teacher's width); ``attention_mask`` ``[batch, seq]`` with 1 on real tokens. Each sample is
    averaged over its own tokens, so padding and batch composition do not change its weight.
    """
    if len(student_hidden) != len(teacher_hidden) or not student_hidden:
        raise ValueError("hidden_state_mse: need one teacher layer per student layer")
    mask = attention_mask.float().unsqueeze(-1)  # [B, S, 1]
    tokens = mask.sum(dim=1).clamp_min(1.0)  # [B, 1]
    per_layer = []
    for s, t in zip(student_hidden, teacher_hidden):
        sq = (s.float() - t.float()).pow(2) * mask  # [B, S, H]
        per_layer.append((sq.sum(dim=1) / tokens).mean(dim=-1))  # [B]
    return torch.stack(per_layer).mean()


class HiddenStateMSELoss(nn.Module):
    def forward(self, student_hidden, teacher_hidden, attention_mask) -> torch.Tensor:
        return hidden_state_mse(student_hidden, teacher_hidden, attention_mask)
