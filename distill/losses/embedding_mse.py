"""Embedding MSE for feature extractors: the student's sentence embedding regresses the
teacher's (Reimers & Gurevych 2020, "Making Monolingual Sentence Embeddings Multilingual using
Knowledge Distillation"; sentence-transformers ``MSELoss``)."""

from __future__ import annotations

import torch
from torch import nn


def embedding_mse(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """``mean_b mean_d (student_bd − teacher_bd)²``. Inputs: pooled embeddings ``[batch, dim]``."""
    return (student_emb.float() - teacher_emb.float()).pow(2).mean(dim=-1).mean()


class EmbeddingMSELoss(nn.Module):
    def forward(self, student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
        return embedding_mse(student_emb, teacher_emb)
