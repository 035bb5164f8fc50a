"""Which texts each process trains on at each step: a distributed batch sampler.

It plays the part of ``DistributedSampler`` + ``BatchSampler`` (reshuffled by ``set_epoch``), with
one difference that the DDP-equivalence guarantee rests on: the *global* batches of an epoch are
fixed by ``(seed, epoch)`` alone, and each global batch is then cut into ``world_size × grad_accum``
equal micro-batches. So one process with accumulation, or N processes, see exactly the same global
batches. Optionally texts of similar length share a global batch (less padding, as in
transformers' ``LengthGroupedSampler``).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from modelpress.errors import BadInputError

MEGABATCH_FACTOR = 50  # global batches sorted by length together before the batch order is shuffled


class DistributedBatchSampler(Sampler[list[int]]):
    """Yields this process's micro-batches (lists of corpus indices), ``grad_accum`` per optimizer step."""

    def __init__(
        self,
        indices: Sequence[int],
        lengths: Sequence[int],
        *,
        global_batch: int,
        grad_accum: int,
        world_size: int,
        rank: int,
        seed: int,
        group_by_length: bool,
    ) -> None:
        if global_batch % (world_size * grad_accum):
            raise BadInputError(
                f"distill.batch_size: {global_batch} is not divisible by processes × grad_accum "
                f"({world_size} × {grad_accum})"
            )
        if len(indices) < global_batch:
            raise BadInputError(f"distill.batch_size: {global_batch} is larger than the {len(indices)} training texts")
        self.indices = list(indices)
        self.lengths = [lengths[i] for i in self.indices]
        self.global_batch = global_batch
        self.grad_accum = grad_accum
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.group_by_length = group_by_length
        self.micro_batch = global_batch // (world_size * grad_accum)
        self.epoch = 0
        self.start_step = 0

    @property
    def steps_per_epoch(self) -> int:
        return len(self.indices) // self.global_batch  # the incomplete last batch is dropped

    def set_epoch(self, epoch: int, *, start_step: int = 0) -> None:
        """Reshuffle for ``epoch``; skip its first ``start_step`` steps (resuming mid-epoch)."""
        self.epoch = epoch
        self.start_step = start_step

    def global_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's global batches; depends only on the seed, the epoch and the data."""
        gen = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.indices), generator=gen).tolist()
        order = order[: self.steps_per_epoch * self.global_batch]
        if self.group_by_length:
            mega = self.global_batch * MEGABATCH_FACTOR
            order = [
                i
                for start in range(0, len(order), mega)
                for i in sorted(order[start : start + mega], key=lambda j: -self.lengths[j])
            ]
        batches = [order[s : s + self.global_batch] for s in range(0, len(order), self.global_batch)]
        if self.group_by_length:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
        return [[self.indices[i] for i in batch] for batch in batches]

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.micro_batch * self.grad_accum
        for batch in self.global_batches(self.epoch)[self.start_step :]:
            mine = batch[self.rank * per_rank : (self.rank + 1) * per_rank]
            for m in range(self.grad_accum):
                yield mine[m * self.micro_batch : (m + 1) * self.micro_batch]

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.grad_accum
