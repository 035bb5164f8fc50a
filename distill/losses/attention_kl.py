"""Attention-distribution KL per mapped layer (MiniLM, Wang et al. 2020, "MiniLM: Deep
Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers", eq. 4;
TinyBERT distils the same maps with MSE). Needs the models' eager attention, which returns the
attention probabilities."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

_EPS = 1e-12


def attention_kl(
    student_attn: Sequence[torch.Tensor],
    teacher_attn: Sequence[torch.Tensor],
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """``KL(teacher_row || student_row)`` per head and real query token, averaged per sample, then
    over samples and layers.

    Inputs: per mapped layer a pair of attention probabilities ``[batch, heads, seq, seq]`` (rows
    sum to 1; padded keys carry 0); ``attention_mask`` ``[batch, seq]``. When the head counts
    differ, both sides are averaged over heads first (still distributions).
    """
    if len(student_attn) != len(teacher_attn) or not student_attn:
        raise ValueError("attention_kl: need one teacher layer per student layer")
    queries = attention_mask.float()  # [B, S]
    per_layer = []
    for s, t in zip(student_attn, teacher_attn):
        s, t = s.float(), t.float()
        if s.shape[1] != t.shape[1]:
            s, t = s.mean(dim=1, keepdim=True), t.mean(dim=1, keepdim=True)
        kl = (torch.xlogy(t, t) - t * torch.log(s.clamp_min(_EPS))).sum(dim=-1)  # [B, H, S]
        per_query = kl.mean(dim=1)  # [B, S]
        per_layer.append((per_query * queries).sum(dim=-1) / queries.sum(dim=-1).clamp_min(1.0))
    return torch.stack(per_layer).mean()


class AttentionKLLoss(nn.Module):
    def forward(self, student_attn, teacher_attn, attention_mask) -> torch.Tensor:
        return attention_kl(student_attn, teacher_attn, attention_mask)
