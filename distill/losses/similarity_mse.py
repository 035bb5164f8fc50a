"""In-batch similarity MSE for feature extractors: the student reproduces the teacher's matrix of
cosine similarities between the sentences of a batch (similarity-preserving distillation, Tung &
Mori 2019, applied to sentence embeddings). Embedding MSE and cosine pull each embedding towards
its target one at a time; this loss supervises the relations between sentences, which is what
semantic-similarity ranking (STS Spearman, retrieval) reads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def similarity_mse(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """``mean_i mean_j (cos(s_i, s_j) − cos(t_i, t_j))²`` over the ``[batch, dim]`` embeddings.

    Unlike the per-sample losses this one couples the samples of a batch: under DDP each process
    compares the sentences of its own micro-batch (as in-batch losses of sentence-transformers do
    without gathering), so it is not the mean of the losses of a batch's halves.
    """
    s = F.normalize(student_emb.float(), p=2, dim=-1, eps=1e-8)
    t = F.normalize(teacher_emb.float(), p=2, dim=-1, eps=1e-8)
    return (s @ s.T - t @ t.T).pow(2).mean()


class SimilarityMSELoss(nn.Module):
    def forward(self, student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
        return similarity_mse(student_emb, teacher_emb)
