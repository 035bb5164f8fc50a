"""Process topology for the trainer: one process, or one of N under ``torchrun`` (DDP).

``distributed_context()`` reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (set by torchrun),
initialises the process group (nccl on CUDA, gloo on CPU) when there is more than one process and
nobody else has, picks the device, and tears the group down again on exit. The helpers below are
no-ops in a single process, so the trainer has one code path.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from modelpress.errors import BadInputError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only this process writes files (checkpoints, caches, the student folder)."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over processes (returned on the CPU)."""
        if not self.distributed:
            return tensor
        t = tensor.to(self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu()

    def all_gather_rows(self, rows: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
        """Every process's ``rows`` (process r holds ``counts[r]`` of them), in rank order."""
        if not self.distributed:
            return [rows]
        width = max(counts)
        padded = torch.zeros((width, *rows.shape[1:]), dtype=rows.dtype, device=self.device)
        padded[: rows.shape[0]] = rows.to(self.device)
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        return [g[:c].cpu() for g, c in zip(gathered, counts)]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise BadInputError(f"environment variable {name}={value!r} is not an integer") from None


@contextlib.contextmanager
def distributed_context() -> Iterator[DistContext]:
    """The topology this process runs in; joins (and later leaves) the process group if needed."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    owns_group = world_size > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend="nccl" if cuda else "gloo", rank=rank, world_size=world_size)
    try:
        yield DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()
