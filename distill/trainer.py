"""The distillation training loop, in one process or as one of N DDP processes.

Shaped after pytorch/examples' DDP tutorial trainer: ``_run_batch`` (one optimizer step over
``grad_accum`` micro-batches), ``_run_epoch`` (``set_epoch`` then the steps), ``_save_snapshot``
(rank 0 only). AdamW with linear warm-up/decay, gradient clipping, autocast, periodic evaluation
against the teacher keeping the best weights, and resumption from ``distill_ckpt/last.pt``.

Determinism: the data order is a function of (seed, epoch), the learning rate of the step, and
the RNG is reseeded from (seed, step, rank) before every step, so a resumed run continues exactly
where the interrupted one would have gone, and N processes match one process with the same
global batch (without dropout).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from modelpress.distill.checkpoint import CheckpointDir, TrainState
from modelpress.distill.config import DistillConfig
from modelpress.distill.data import IndexDataset, TokenizedCorpus
from modelpress.distill.distributed import DistContext
from modelpress.distill.evaluation import EvalResult, evaluate
from modelpress.distill.forward import DistillModule
from modelpress.distill.objective import DistillObjective
from modelpress.distill.precision import Precision
from modelpress.distill.sampler import DistributedBatchSampler
from modelpress.distill.schedule import lr_factor, warmup_steps
from modelpress.distill.teacher import TeacherTargets


def say(message: str) -> None:
    """A progress message on stderr that does not break the progress bar (call on rank 0 only)."""
    tqdm.write(message, file=sys.stderr)


@dataclass(frozen=True)
class TrainPlan:
    """How long training runs and when it evaluates and saves, in optimizer steps."""

    total_steps: int
    steps_per_epoch: int
    warmup_steps: int
    eval_every: int  # 0: no evaluation (no held-out texts)
    save_every: int

    @classmethod
    def from_config(cls, cfg: DistillConfig, *, steps_per_epoch: int, has_eval: bool) -> "TrainPlan":
        total = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
        eval_every = (cfg.eval_every or steps_per_epoch) if has_eval else 0
        return cls(
            total_steps=total,
            steps_per_epoch=steps_per_epoch,
            warmup_steps=warmup_steps(total, cfg.warmup_ratio),
            eval_every=eval_every,
            save_every=cfg.save_every,
        )


def build_optimizer(module: nn.Module, cfg: DistillConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases and normalisation weights.

    eps = 1e-6 as in BERT and DistilBERT: parameters whose true gradient is zero (an attention key
    bias: softmax ignores a shift shared by all keys) only see rounding noise, and a tiny eps
    would let Adam blow that noise up into full-size steps.
    """
    decay: list[Any] = []
    no_decay: list[Any] = []
    for param in module.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.999), eps=1e-6)


def freeze_unused_parameters(
    module: DistillModule,
    objective: DistillObjective,
    teacher: TeacherTargets,
    batch: Mapping[str, torch.Tensor],
    device: torch.device,
) -> list[str]:
    """Freeze parameters no loss reaches (e.g. a feature extractor's pooler), found by one probe
    backward pass; DDP needs every trainable parameter to receive a gradient every step."""
    inputs = {k: v.to(device) for k, v in batch.items()}
    parts = objective(module(inputs), teacher.for_batch(batch), inputs)
    parts["loss"].backward()
    unused = [name for name, p in module.named_parameters() if p.requires_grad and p.grad is None]
    for name, p in module.named_parameters():
        p.grad = None
        if name in unused:
            p.requires_grad_(False)
    return unused


class Trainer:
    """Trains ``module`` to imitate ``teacher``; all processes construct one and call :meth:`train`."""

    def __init__(
        self,
        *,
        module: DistillModule,
        objective: DistillObjective,
        teacher: TeacherTargets,
        corpus: TokenizedCorpus,
        sampler: DistributedBatchSampler,
        eval_indices: Sequence[int],
        plan: TrainPlan,
        cfg: DistillConfig,
        dist: DistContext,
        precision: Precision,
        ckpt: CheckpointDir,
        fingerprint: str,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        self.module = module.to(dist.device)
        self.objective = objective
        self.teacher = teacher
        self.corpus = corpus
        self.sampler = sampler
        self.eval_indices = list(eval_indices)
        self.plan = plan
        self.cfg = cfg
        self.dist = dist
        self.precision = precision
        self.ckpt = ckpt
        self.fingerprint = fingerprint
        self.on_step = on_step
        self.state = TrainState()
        self.loader = DataLoader(IndexDataset(len(corpus)), batch_sampler=sampler, collate_fn=corpus.collate)
        probe = corpus.collate(sampler.indices[: sampler.micro_batch])
        frozen = freeze_unused_parameters(module, objective, teacher, probe, dist.device)
        if frozen and dist.is_main:
            say(
                f"distill: {len(frozen)} parameter tensors get no gradient from the losses and stay "
                f"fixed ({frozen[0]}, ...)"
            )
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(module, cfg)
        self.scaler = torch.amp.GradScaler(dist.device.type) if precision.needs_grad_scaler else None
        self._load_snapshot()
        if dist.distributed:
            ids = [dist.device.index] if dist.device.type == "cuda" else None
            self.model: nn.Module = DistributedDataParallel(module, device_ids=ids)
        else:
            self.model = module
        self._bar: tqdm | None = None
        self._samples_seen = 0
        self._started = 0.0

    # --- the loop -------------------------------------------------------------------------------

    def train(self) -> TrainState:
        """Run (or finish) training; returns the final state (its best_step names the kept weights)."""
        if self.state.step == 0 and self.plan.eval_every:
            self._evaluate()  # the starting point is a candidate too
        self._bar = tqdm(
            total=self.plan.total_steps,
            initial=self.state.step,
            desc="distill",
            unit="step",
            file=sys.stderr,
            disable=not self.dist.is_main,
            dynamic_ncols=True,
        )
        self._started = time.perf_counter()
        try:
            while self.state.step < self.plan.total_steps:
                epoch, offset = divmod(self.state.step, self.plan.steps_per_epoch)
                self._run_epoch(epoch, offset)
        finally:
            self._bar.close()
        evaluated = self.state.history and self.state.history[-1]["step"] == self.state.step
        if self.plan.eval_every and not evaluated:
            self._evaluate()
        self._save_snapshot()
        return self.state

    def _run_epoch(self, epoch: int, start_step: int) -> None:
        self.sampler.set_epoch(epoch, start_step=start_step)
        micro: list[dict[str, torch.Tensor]] = []
        for batch in self.loader:
            micro.append(batch)
            if len(micro) < self.cfg.grad_accum:
                continue
            losses = self._run_batch(micro)
            micro = []
            self._after_step(losses)
            if self.state.step >= self.plan.total_steps:
                return

    def _run_batch(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """One optimizer step over this process's micro-batches; returns the global mean losses."""
        step = self.state.step
        torch.manual_seed(self.cfg.seed * 1_000_003 + step * self.dist.world_size + self.dist.rank)
        lr = self.cfg.lr * lr_factor(step, warmup=self.plan.warmup_steps, total=self.plan.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        totals: dict[str, torch.Tensor] = {}
        for k, batch in enumerate(micro_batches):
            last = k == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or not self.dist.distributed else self.model.no_sync()
            with sync:
                target = self.teacher.for_batch(batch)
                inputs = {name: t.to(self.dist.device) for name, t in batch.items()}
                with self.precision.autocast():
                    outputs = self.model(inputs)
                parts = self.objective(outputs, target, inputs)
                loss = parts["loss"] / len(micro_batches)
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            for name, value in parts.items():
                totals[name] = totals.get(name, 0.0) + value.detach().float().cpu() / len(micro_batches)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        names = sorted(totals)
        reduced = self.dist.all_reduce_sum(torch.stack([totals[n] for n in names])) / self.dist.world_size
        return dict(zip(names, reduced.tolist()))

    def _after_step(self, losses: dict[str, float]) -> None:
        step = self.state.step
        self._samples_seen += self.cfg.batch_size
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        if not math.isfinite(losses["loss"]):
            raise FloatingPointError(f"distillation loss became {losses['loss']} at step {step}")
        self._bar.set_postfix(  # type: ignore[union-attr]  # the bar is open while training (start() made it)
            loss=f"{losses['loss']:.4g}", samples_s=f"{self._samples_seen / elapsed:.0f}", refresh=False
        )
        self._bar.update(1)  # type: ignore[union-attr]  # as above
        final = step >= self.plan.total_steps
        if self.plan.eval_every and step % self.plan.eval_every == 0:
            self._evaluate()
        if step % self.plan.save_every == 0 and not final:
            self._save_snapshot()
        if self.on_step is not None:
            self.on_step(step)

    # --- evaluation and snapshots ---------------------------------------------------------------

    def _evaluate(self) -> EvalResult:
        result = evaluate(
            self.module,
            self.teacher,
            self.corpus,
            self.eval_indices,
            step=self.state.step,
            dist=self.dist,
            precision=self.precision,
            batch_size=max(1, self.cfg.batch_size // self.dist.world_size),
        )
        self.state.history.append({"step": result.step, **result.metrics})
        improved = self.state.best_score is None or result.score > self.state.best_score
        if improved:
            self.state.best_score, self.state.best_step = result.score, result.step
            if self.dist.is_main:
                self.ckpt.save_best(self.module.student)
        self.dist.barrier()
        if self.dist.is_main:
            shown = ", ".join(f"{k}={v:.5g}" for k, v in result.metrics.items())
            message = f"eval step {result.step}: {shown}{' (best)' if improved else ''}"
            say(message)
        return result

    def _save_snapshot(self) -> None:
        if self.dist.is_main:
            self.ckpt.save_last(
                fingerprint=self.fingerprint,
                state=self.state,
                module=self.module,
                optimizer=self.optimizer,
                scaler=self.scaler,
            )
        self.dist.barrier()

    def _load_snapshot(self) -> None:
        payload = self.ckpt.load_last(self.fingerprint)
        if payload is None:
            return
        self.module.load_state_dict(payload["module"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scaler is not None and payload["scaler"] is not None:
            self.scaler.load_state_dict(payload["scaler"])
        self.state = CheckpointDir.state_from(payload)
        if self.dist.is_main:
            say(f"distill: resuming from {self.ckpt.last} at step {self.state.step} of {self.plan.total_steps}")
