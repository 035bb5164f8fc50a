"""Periodic evaluation of the student against the teacher on the held-out texts.

Feature extraction: mean cosine similarity and MSE between student and teacher embeddings.
Classification: top-1 agreement with the teacher and mean KL(teacher || student) at T = 1.
A task whose output is of another kind brings its own (``Task.heldout_metric``: a ranker's score MSE).
Each process evaluates a shard; the metrics are sums reduced over processes, so the result does
not depend on the number of processes. ``score`` orders results (higher is better) for keeping
the best checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from modelpress.distill.data import TokenizedCorpus
from modelpress.distill.distributed import DistContext
from modelpress.distill.forward import DistillModule, ModelOutputs
from modelpress.distill.precision import Precision
from modelpress.distill.teacher import TeacherTargets
from modelpress.tasks import MetricSpec


@dataclass(frozen=True)
class EvalResult:
    step: int
    metrics: dict[str, float]
    score: tuple[float, ...]  # compared lexicographically; higher is better


def _embedding_sums(student: ModelOutputs, teacher: ModelOutputs) -> torch.Tensor:
    s, t = student.sentence.float(), teacher.sentence.float()
    cos = F.cosine_similarity(s, t, dim=-1)
    mse = (s - t).pow(2).mean(dim=-1)
    return torch.stack([cos.sum(), mse.sum()])


def _logit_sums(student: ModelOutputs, teacher: ModelOutputs) -> torch.Tensor:
    s, t = student.sentence.float(), teacher.sentence.float()
    agree = (s.argmax(dim=-1) == t.argmax(dim=-1)).float()
    log_t = F.log_softmax(t, dim=-1)
    kl = (log_t.exp() * (log_t - F.log_softmax(s, dim=-1))).sum(dim=-1)
    return torch.stack([agree.sum(), kl.sum()])


def _token_logit_sums(student: ModelOutputs, teacher: ModelOutputs) -> torch.Tensor:
    """Per sample, agreement and KL averaged over its real tokens; summed over the batch."""
    s, t = student.sentence.float(), teacher.sentence.float()
    mask = student.mask.float()  # type: ignore[union-attr]  # per-token outputs always carry their mask
    tokens = mask.sum(dim=-1).clamp_min(1.0)
    agree = ((s.argmax(dim=-1) == t.argmax(dim=-1)).float() * mask).sum(dim=-1) / tokens
    log_t = F.log_softmax(t, dim=-1)
    kl = ((log_t.exp() * (log_t - F.log_softmax(s, dim=-1))).sum(dim=-1) * mask).sum(dim=-1) / tokens
    return torch.stack([agree.sum(), kl.sum()])


#: the held-out metrics by the kind of output a task compares (``DistillSpec.output``); a task whose
#: output is of another kind gives its own (``Task.heldout_metric``)
METRICS = {
    "embedding": MetricSpec(("cosine", "mse"), _embedding_sums, lambda m: (m["cosine"],)),
    "logits": MetricSpec(("agreement", "kl"), _logit_sums, lambda m: (m["agreement"], -m["kl"])),
    "token_logits": MetricSpec(("agreement", "kl"), _token_logit_sums, lambda m: (m["agreement"], -m["kl"])),
}


def metric_spec(spec: Any) -> MetricSpec:
    """The held-out metrics of a task (``distill.tasks.TaskSpec``): its own, else its output kind's."""
    own = spec.task.heldout_metric()
    if own is not None:
        return own
    if spec.sentence_output not in METRICS:  # a task module's omission, not a user's
        raise TypeError(f"{spec.name}: no held-out metric for the output kind {spec.sentence_output!r}")
    return METRICS[spec.sentence_output]


@torch.no_grad()
def evaluate(
    module: DistillModule,
    teacher: TeacherTargets,
    corpus: TokenizedCorpus,
    indices: Sequence[int],
    *,
    step: int,
    dist: DistContext,
    precision: Precision,
    batch_size: int,
) -> EvalResult:
    """Student-vs-teacher metrics over ``indices`` (all processes must call this together)."""
    spec = metric_spec(module.spec)
    was_training = module.training
    module.eval()

    def pairs() -> Iterator[tuple[ModelOutputs, ModelOutputs]]:
        for batch in shard_batches(corpus, indices, dist=dist, batch_size=batch_size):
            target = teacher.for_batch(batch, token_level=False)
            inputs = {k: v.to(dist.device) for k, v in batch.items()}
            with precision.autocast():
                yield module.student_outputs(inputs), target

    try:
        metrics = mean_metrics(spec, pairs(), dist=dist)
    finally:
        module.train(was_training)
    return EvalResult(step=step, metrics=metrics, score=spec.score(metrics))


def shard_batches(
    corpus: TokenizedCorpus, indices: Sequence[int], *, dist: DistContext, batch_size: int
) -> list[dict[str, torch.Tensor]]:
    """This process's share of ``indices``, longest first, as padded batches."""
    lengths = corpus.lengths
    mine = sorted(indices, key=lambda i: -lengths[i])[dist.rank :: dist.world_size]
    return [corpus.collate(mine[s : s + batch_size]) for s in range(0, len(mine), batch_size)]


def mean_metrics(
    spec: MetricSpec, pairs: Iterable[tuple[ModelOutputs, ModelOutputs]], *, dist: DistContext
) -> dict[str, float]:
    """Per-sample means of ``spec``'s metrics over (student, teacher) output pairs of all processes."""
    totals = torch.zeros(len(spec.names) + 1, dtype=torch.float64)
    for student, target in pairs:
        totals[:-1] += spec.sums(student, target).double().cpu()
        totals[-1] += student.sentence.shape[0]
    totals = dist.all_reduce_sum(totals)
    count = max(totals[-1].item(), 1.0)
    return {name: totals[i].item() / count for i, name in enumerate(spec.names)}
