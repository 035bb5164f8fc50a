"""Embedding cosine loss: align the direction of the student's sentence embedding with the
teacher's, which is what cosine-similarity search uses (sentence-transformers
``CosineSimilarityLoss`` applied to teacher/student pairs; Reimers & Gurevych 2019/2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def embedding_cosine(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """``mean_b (1 − cos(student_b, teacher_b))``. Inputs: pooled embeddings ``[batch, dim]``."""
    cos = F.cosine_similarity(student_emb.float(), teacher_emb.float(), dim=-1, eps=1e-8)
    return (1.0 - cos).mean()


class EmbeddingCosineLoss(nn.Module):
    def forward(self, student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
        return embedding_cosine(student_emb, teacher_emb)
