"""The distillation objective: the weighted sum of the losses a recipe switched on.

It maps student layers to teacher layers (``layer_map``) for the token-level losses and returns
every active loss separately (for the progress bar and logs) plus their weighted total.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from modelpress.distill.forward import ModelOutputs
from modelpress.distill.losses import (
    attention_kl,
    embedding_cosine,
    embedding_mse,
    hard_label_ce,
    hidden_state_mse,
    similarity_mse,
    soft_target_kl,
)

TOKEN_LEVEL_LOSSES = ("hidden_mse", "attention_kl")


class DistillObjective:
    """``total = Σ weight_i · loss_i`` over the losses with a positive weight."""

    def __init__(self, weights: Mapping[str, float], *, temperature: float, layer_map: Sequence[int]) -> None:
        self.weights = {name: float(w) for name, w in weights.items() if w > 0}
        self.temperature = temperature
        self.layer_map = tuple(layer_map)

    @property
    def needs_hidden(self) -> bool:
        return "hidden_mse" in self.weights

    @property
    def needs_attentions(self) -> bool:
        return "attention_kl" in self.weights

    @property
    def needs_token_targets(self) -> bool:
        return any(name in self.weights for name in TOKEN_LEVEL_LOSSES)

    def __call__(
        self, student: ModelOutputs, teacher: ModelOutputs, batch: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Each active loss by name, and ``"loss"``: their weighted sum (a scalar to backpropagate)."""
        parts = {name: LOSSES[name](self, student, teacher, batch) for name in self.weights}
        parts["loss"] = sum(self.weights[name] * value for name, value in parts.items())
        return parts


def _mapped(objective: DistillObjective, teacher_layers: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [teacher_layers[i] for i in objective.layer_map]


# loss name (a key of [distill.losses]) → how it reads student and teacher outputs
LOSSES = {
    "embedding_mse": lambda o, s, t, b: embedding_mse(s.sentence, t.sentence),
    "embedding_cos": lambda o, s, t, b: embedding_cosine(s.sentence, t.sentence),
    "similarity_mse": lambda o, s, t, b: similarity_mse(s.sentence, t.sentence),
    "kl": lambda o, s, t, b: soft_target_kl(s.sentence, t.sentence, o.temperature, b.get("attention_mask")),
    "ce": lambda o, s, t, b: hard_label_ce(s.sentence, b["labels"]),
    "hidden_mse": lambda o, s, t, b: hidden_state_mse(
        s.hidden_states, _mapped(o, t.hidden_states), b["attention_mask"]
    ),
    "attention_kl": lambda o, s, t, b: attention_kl(s.attentions, _mapped(o, t.attentions), b["attention_mask"]),
}
