"""Each distillation loss against a reference computed by hand (plain Python math) on fixed tensors,
and the property DDP equivalence rests on: a batch's loss is the mean of its equal halves' losses."""

from __future__ import annotations

import math

import pytest
import torch

from modelpress.distill.losses import (
    attention_kl,
    embedding_cosine,
    embedding_mse,
    hard_label_ce,
    hidden_state_mse,
    similarity_mse,
    soft_target_kl,
)
from modelpress.distill.objective import DistillObjective
from modelpress.distill.forward import ModelOutputs
from modelpress.tasks.feature_extraction import pool


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


STUDENT_LOGITS = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
TEACHER_LOGITS = [[3.0, 2.0, 1.0], [1.0, 0.0, 0.0]]


def test_soft_target_kl_matches_hand_computation():
    t = 2.0
    expected = 0.0
    for s_row, t_row in zip(STUDENT_LOGITS, TEACHER_LOGITS):
        p = _softmax([x / t for x in t_row])
        q = _softmax([x / t for x in s_row])
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = expected / 2 * t * t
    got = soft_target_kl(torch.tensor(STUDENT_LOGITS), torch.tensor(TEACHER_LOGITS), t)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.6744576, rel=1e-6)  # checked on paper: (0.3202 + 0.0172) / 2 · 4
    # identical logits: zero at any temperature
    assert soft_target_kl(torch.tensor(TEACHER_LOGITS), torch.tensor(TEACHER_LOGITS), 3.0).item() == pytest.approx(
        0, abs=1e-7
    )


def test_hard_label_ce_matches_hand_computation():
    labels = [2, 0]
    expected = -sum(math.log(_softmax(row)[y]) for row, y in zip(STUDENT_LOGITS, labels)) / 2
    got = hard_label_ce(torch.tensor(STUDENT_LOGITS), torch.tensor(labels))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_embedding_mse_and_cosine_match_hand_computation():
    s = [[1.0, 0.0, 2.0], [0.0, 3.0, 4.0]]
    t = [[0.0, 1.0, 2.0], [0.0, 3.0, 0.0]]
    mse = sum((a - b) ** 2 for rs, rt in zip(s, t) for a, b in zip(rs, rt)) / 6
    assert embedding_mse(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(mse)  # (1+1+0 + 0+0+16)/6 = 3

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    expected = ((1 - cos(s[0], t[0])) + (1 - cos(s[1], t[1]))) / 2  # (1 - 4/5) and (1 - 9/15): 0.3
    assert embedding_cosine(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.3)


def test_similarity_mse_matches_hand_computation():
    s = [[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]
    t = [[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    expected = sum((cos(s[i], s[j]) - cos(t[i], t[j])) ** 2 for i in range(3) for j in range(3)) / 9
    # off-diagonal pairs: (0 − 0.7071)², (0.6 − 0.7071)², (0.8 − 0)², each twice; the diagonal is 0
    assert expected == pytest.approx(2 * (0.5 + 0.011472 + 0.64) / 9, rel=1e-4)
    assert similarity_mse(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(expected, rel=1e-6)
    # only directions count: rescaled embeddings give the same similarities
    scaled = torch.tensor(s) * torch.tensor([[2.0], [0.5], [7.0]])
    assert similarity_mse(scaled, torch.tensor(s)).item() == pytest.approx(0.0, abs=1e-7)


def test_hidden_state_mse_averages_each_sample_over_its_real_tokens():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    s = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[0.0, 0.0], [50.0, 50.0], [50.0, 50.0]]])
    t = torch.tensor([[[1.0, 0.0], [0.0, 4.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]])
    # sample 0: tokens 0,1 → squared errors (0+4)/2=2, (9+0)/2=4.5 → mean over tokens 3.25
    # sample 1: token 0 → (1+1)/2 = 1; padding ignored. Layer loss = (3.25 + 1) / 2 = 2.125
    one_layer = hidden_state_mse([s], [t], mask)
    assert one_layer.item() == pytest.approx(2.125)
    # two layers: the mean of the per-layer losses (second layer is perfect)
    assert hidden_state_mse([s, t], [t, t], mask).item() == pytest.approx(2.125 / 2)


def test_attention_kl_matches_hand_computation_with_padding_and_head_averaging():
    mask = torch.tensor([[1, 1, 0]])
    t_rows = [[0.5, 0.5, 0.0], [0.9, 0.1, 0.0], [0.3, 0.3, 0.4]]  # row 2 is a padded query: ignored
    s_rows = [[0.25, 0.75, 0.0], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]
    teacher = torch.tensor([[t_rows]])  # [batch 1, heads 1, 3, 3]
    student = torch.tensor([[s_rows]])

    def kl(p, q):
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)

    expected = (kl(t_rows[0], s_rows[0]) + kl(t_rows[1], s_rows[1])) / 2
    assert attention_kl([student], [teacher], mask).item() == pytest.approx(expected, rel=1e-6)
    # teacher with 2 heads, student with 1: both sides are averaged over heads first
    teacher2 = torch.tensor([[t_rows, s_rows]])
    avg = [[(a + b) / 2 for a, b in zip(r1, r2)] for r1, r2 in zip(t_rows, s_rows)]
    expected2 = (kl(avg[0], s_rows[0]) + kl(avg[1], s_rows[1])) / 2
    assert attention_kl([student], [teacher2], mask).item() == pytest.approx(expected2, rel=1e-6)


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, pooling="mean", normalize=False).tolist() == [[2.0, 3.0]]
    assert pool(hidden, mask, pooling="cls", normalize=False).tolist() == [[1.0, 1.0]]
    normed = pool(hidden, mask, pooling="mean", normalize=True)
    assert normed.norm(dim=-1).item() == pytest.approx(1.0)


def _random_case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, seq, h, heads, classes = 4, 5, 6, 2, 3
    mask = torch.ones(b, seq, dtype=torch.long)
    for i, n in enumerate([5, 3, 4, 2]):
        mask[i, n:] = 0

    def attn():
        logits = torch.randn(b, heads, seq, seq, generator=g).masked_fill(mask[:, None, None, :] == 0, -1e9)
        return logits.softmax(-1)

    def outputs(width):
        return ModelOutputs(
            sentence=torch.randn(b, width, generator=g),
            hidden_states=tuple(torch.randn(b, seq, h, generator=g) for _ in range(2)),
            attentions=(attn(), attn()),
        )

    batch = {"attention_mask": mask, "labels": torch.tensor([0, 2, 1, 1])}
    return outputs(classes), outputs(classes), batch


def _half(outputs: ModelOutputs, sl: slice) -> ModelOutputs:
    return ModelOutputs(
        sentence=outputs.sentence[sl],
        hidden_states=tuple(h[sl] for h in outputs.hidden_states),
        attentions=tuple(a[sl] for a in outputs.attentions),
    )


@pytest.mark.parametrize("name", ["embedding_mse", "embedding_cos", "kl", "ce", "hidden_mse", "attention_kl"])
def test_every_loss_of_a_batch_is_the_mean_of_its_equal_halves(name):
    """Padding differs between the halves; the per-sample definitions make the split irrelevant."""
    student, teacher, batch = _random_case()
    objective = DistillObjective({name: 1.0}, temperature=2.0, layer_map=[1, 0])
    full = objective(student, teacher, batch)[name]
    halves = []
    for sl in (slice(0, 2), slice(2, 4)):
        part = {k: v[sl] for k, v in batch.items()}
        halves.append(objective(_half(student, sl), _half(teacher, sl), part)[name])
    assert full.item() == pytest.approx(((halves[0] + halves[1]) / 2).item(), rel=1e-6)


def test_objective_weights_and_layer_map():
    student, teacher, batch = _random_case(1)
    objective = DistillObjective({"kl": 2.0, "hidden_mse": 0.5, "ce": 0.0}, temperature=1.5, layer_map=[1, 0])
    parts = objective(student, teacher, batch)
    assert set(parts) == {"kl", "hidden_mse", "loss"}
    mapped = hidden_state_mse(
        student.hidden_states, [teacher.hidden_states[1], teacher.hidden_states[0]], batch["attention_mask"]
    )
    assert parts["hidden_mse"].item() == pytest.approx(mapped.item())
    assert parts["loss"].item() == pytest.approx(2.0 * parts["kl"].item() + 0.5 * mapped.item())
