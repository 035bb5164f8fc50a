"""Distillation losses: one module per loss, each a pure function plus a thin ``nn.Module``.

Every loss is a mean over samples of a per-sample quantity, so the loss of a global batch is the
average of the losses of equal-sized shards of it: training on N processes (DDP averages the
gradients) gives the same update as one process with the same global batch. The exception is
``similarity_mse``, which compares the sentences of a micro-batch with each other.
"""

from modelpress.distill.losses.attention_kl import AttentionKLLoss, attention_kl
from modelpress.distill.losses.embedding_cosine import EmbeddingCosineLoss, embedding_cosine
from modelpress.distill.losses.embedding_mse import EmbeddingMSELoss, embedding_mse
from modelpress.distill.losses.hard_label_ce import HardLabelCELoss, hard_label_ce
from modelpress.distill.losses.hidden_state_mse import HiddenStateMSELoss, hidden_state_mse
from modelpress.distill.losses.similarity_mse import SimilarityMSELoss, similarity_mse
from modelpress.distill.losses.soft_target_kl import SoftTargetKLLoss, soft_target_kl

__all__ = [
    "AttentionKLLoss",
    "attention_kl",
    "EmbeddingCosineLoss",
    "embedding_cosine",
    "EmbeddingMSELoss",
    "embedding_mse",
    "HardLabelCELoss",
    "hard_label_ce",
    "HiddenStateMSELoss",
    "hidden_state_mse",
    "SimilarityMSELoss",
    "similarity_mse",
    "SoftTargetKLLoss",
    "soft_target_kl",
]
