"""The teacher side of distillation: load the frozen teacher and produce its targets.

Targets are computed under ``no_grad`` with the same forward code as the student
(:func:`distill.forward.run_model`). Sentence-level targets (pooled embeddings or logits) can be
computed once for the whole corpus, shared by all processes (each computes a shard), and kept
under ``distill_ckpt/`` so repeated epochs and resumed runs skip the teacher entirely. Token-level
losses (hidden states, attention maps) are too large to cache and run the teacher every step.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from distill.checkpoint import atomic_path
from distill.data import TokenizedCorpus
from distill.distributed import DistContext
from distill.forward import ModelOutputs, run_model
from distill.precision import Precision
from distill.student import auto_class
from distill.tasks import TaskOptions, TaskSpec
from modelpress.errors import BadInputError


def load_teacher(ref: str, spec: TaskSpec, *, attn_implementation: str | None = None) -> nn.Module:
    """The teacher in fp32, eval mode, frozen; a classifier must come with its trained head."""
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        model, info = auto_class(spec).from_pretrained(ref, dtype=torch.float32, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"teacher '{ref}': cannot load as {spec.auto_class} ({str(exc).splitlines()[0]})") from None
    if info.get("missing_keys"):
        missing = ", ".join(sorted(info["missing_keys"])[:3])
        raise BadInputError(f"teacher '{ref}': checkpoint lacks weights for {missing} (no trained {spec.name} head?)")
    model.eval()
    model.requires_grad_(False)
    return model


class TeacherTargets:
    """Teacher outputs per batch: from the cache when possible, else a live forward pass."""

    def __init__(
        self,
        model: nn.Module,
        *,
        spec: TaskSpec,
        options: TaskOptions,
        precision: Precision,
        device: torch.device,
        need_hidden: bool,
        need_attentions: bool,
    ) -> None:
        self.model = model.to(device)
        self.spec = spec
        self.options = options
        self.precision = precision
        self.device = device
        self.need_hidden = need_hidden
        self.need_attentions = need_attentions
        self.cache: torch.Tensor | None = None  # [corpus rows, dim] sentence-level targets

    @torch.no_grad()
    def compute(self, batch: Mapping[str, torch.Tensor], *, token_level: bool = True) -> ModelOutputs:
        inputs = {k: v.to(self.device) for k, v in batch.items()}
        with self.precision.autocast():
            out = run_model(self.model, inputs, spec=self.spec, options=self.options,
                            need_hidden=token_level and self.need_hidden,
                            need_attentions=token_level and self.need_attentions)
        return out.detach()

    def for_batch(self, batch: Mapping[str, torch.Tensor], *, token_level: bool = True) -> ModelOutputs:
        """Targets for a batch (``token_level=False``: the sentence-level output is enough)."""
        if self.cache is not None and not (token_level and (self.need_hidden or self.need_attentions)):
            return ModelOutputs(sentence=self.cache[batch["index"]].to(self.device))
        return self.compute(batch, token_level=token_level)

    def build_cache(
        self, corpus: TokenizedCorpus, *, path: Path, fingerprint: str, dist: DistContext, batch_size: int
    ) -> None:
        """Load the sentence-level targets of every corpus row from ``path``, or compute and write them."""
        cached = _read_cache(path, fingerprint)
        if cached is not None and cached.shape[0] == len(corpus):
            self.cache = cached
            return
        lengths = corpus.lengths
        by_length = sorted(range(len(corpus)), key=lambda i: -lengths[i])  # little padding per batch
        shards = [by_length[r::dist.world_size] for r in range(dist.world_size)]
        mine = shards[dist.rank]
        rows = [
            self.compute(corpus.collate(mine[s:s + batch_size]), token_level=False).sentence.cpu()
            for s in range(0, len(mine), batch_size)
        ]
        local = torch.cat(rows) if rows else torch.zeros(0)
        gathered = dist.all_gather_rows(local, [len(s) for s in shards])
        full = torch.empty((len(corpus), *gathered[0].shape[1:]), dtype=torch.float32)
        for shard, values in zip(shards, gathered):
            full[shard] = values.float()
        self.cache = full
        if dist.is_main:
            with atomic_path(path) as tmp:
                save_file({"sentence": full.contiguous()}, str(tmp), metadata={"fingerprint": fingerprint})
        dist.barrier()


def _read_cache(path: Path, fingerprint: str) -> torch.Tensor | None:
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as fh:
        if (fh.metadata() or {}).get("fingerprint") != fingerprint:
            return None
        return fh.get_tensor("sentence")
