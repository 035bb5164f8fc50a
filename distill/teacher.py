"""The teacher side of distillation: load the frozen teacher and produce its targets.

Targets are computed under ``no_grad`` with the same forward code as the student
(:func:`distill.forward.run_model`). They can be computed once for the whole corpus, shared by
all processes (each computes a shard), and kept under ``distill_ckpt/`` so repeated epochs and
resumed runs skip the teacher entirely: the sentence-level targets (pooled embeddings or logits)
always, and the hidden states of the mapped teacher layers (for ``hidden_mse``) when they fit in
``cache_teacher_max_mb`` — stored per real token in fp16, no padding. On MiniLM-L6 that removes
the teacher's forward pass, about 30 % of a training step. Attention maps are never cached (the
teacher then runs every step).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from modelpress.fileio import atomic_path
from modelpress.distill.data import TokenizedCorpus
from modelpress.distill.distributed import DistContext
from modelpress.distill.forward import ModelOutputs, run_model
from modelpress.distill.precision import Precision
from modelpress.distill.student import auto_class
from modelpress.distill.task_view import DistillTaskView
from modelpress.errors import BadInputError


def load_teacher(ref: str, spec: DistillTaskView, *, attn_implementation: str | None = None) -> nn.Module:
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
        spec: DistillTaskView,
        precision: Precision,
        device: torch.device,
        need_hidden: bool,
        need_attentions: bool,
        hidden_layers: Sequence[int] = (),
    ) -> None:
        self.model = model.to(device)
        self.spec = spec
        self.precision = precision
        self.device = device
        self.need_hidden = need_hidden
        self.need_attentions = need_attentions
        self.hidden_layers = tuple(hidden_layers)  # teacher layers a token-level cache keeps
        self.cache: torch.Tensor | None = None  # [corpus rows, dim] sentence-level targets
        self.token_cache: TokenCache | None = None  # hidden states of hidden_layers, per real token

    @torch.no_grad()
    def compute(self, batch: Mapping[str, torch.Tensor], *, token_level: bool = True) -> ModelOutputs:
        inputs = {k: v.to(self.device) for k, v in batch.items()}
        with self.precision.autocast():
            out = run_model(
                self.model,
                inputs,
                spec=self.spec,
                need_hidden=token_level and self.need_hidden,
                need_attentions=token_level and self.need_attentions,
            )
        return out.detach()

    def for_batch(self, batch: Mapping[str, torch.Tensor], *, token_level: bool = True) -> ModelOutputs:
        """Targets for a batch (``token_level=False``: the sentence-level output is enough).

        From the cache, ``hidden_states`` holds a tensor for each cached layer and ``None`` for the
        teacher layers no loss reads."""
        if self.cache is not None:
            sentence = self.cache[batch["index"]].to(self.device)
            if not (token_level and (self.need_hidden or self.need_attentions)):
                return ModelOutputs(sentence=sentence)
            if self.token_cache is not None and not self.need_attentions:
                hidden = self.token_cache.batch(batch["index"], width=batch["input_ids"].shape[1])
                return ModelOutputs(
                    sentence=sentence, hidden_states=tuple(None if h is None else h.to(self.device) for h in hidden)
                )
        return self.compute(batch, token_level=token_level)

    def build_cache(
        self,
        corpus: TokenizedCorpus,
        *,
        path: Path,
        fingerprint: str,
        dist: DistContext,
        batch_size: int,
        max_token_mb: float = 0.0,
    ) -> None:
        """Load the targets of every corpus row from ``path``, or compute and write them: the
        sentence-level ones, and the hidden states of ``hidden_layers`` when they are needed and
        their fp16 size is at most ``max_token_mb``."""
        tokens = self.need_hidden and bool(self.hidden_layers) and self._token_mb(corpus) <= max_token_mb
        fingerprint = f"{fingerprint}:layers={list(self.hidden_layers) if tokens else None}"
        cached = _read_cache(path, fingerprint)
        if cached is not None and cached["sentence"].shape[0] == len(corpus):
            self.cache = cached["sentence"]
            if tokens:
                self.token_cache = TokenCache(
                    values=cached["hidden"],
                    offsets=cached["offsets"],
                    lengths=torch.tensor(corpus.lengths),
                    layers=self.hidden_layers,
                    num_layers=self._num_layers(),
                )
            return
        lengths = corpus.lengths
        by_length = sorted(range(len(corpus)), key=lambda i: -lengths[i])  # little padding per batch
        shards = [by_length[r :: dist.world_size] for r in range(dist.world_size)]
        mine = shards[dist.rank]
        # token states go straight into one preallocated fp16 tensor: a list of fp32 chunks plus
        # their concatenation peaked at 15.5 GB RSS for 50,000 SST-2 sentences (1.5 GB of fp16 states)
        width = (len(self.hidden_layers), self.model.config.hidden_size) if tokens else (0,)
        local = torch.empty((sum(lengths[i] for i in mine) if tokens else 0, *width), dtype=torch.float16)
        sentences, cursor = [], 0
        for s in range(0, len(mine), batch_size):
            batch = corpus.collate(mine[s : s + batch_size])
            out = self.compute(batch, token_level=tokens)
            sentences.append(out.sentence.cpu())
            if tokens:
                real = batch["attention_mask"].bool()  # row-major: each row's real tokens in order
                layers = torch.stack([out.hidden_states[i] for i in self.hidden_layers], dim=2)
                chunk = layers[real.to(layers.device)].cpu()
                if local.dtype == torch.float16 and chunk.abs().max().item() > torch.finfo(torch.float16).max:
                    local = local.float()  # beyond fp16's range: keep fp32
                local[cursor : cursor + len(chunk)] = chunk
                cursor += len(chunk)
        full = self._gather_rows(sentences, shards, dist)
        tensors = {"sentence": full.contiguous()}
        if tokens:
            if dist.all_reduce_sum(torch.tensor([float(local.dtype == torch.float32)])).item() > 0:
                local = local.float()  # every process must send the same dtype
            counts = [sum(lengths[i] for i in shard) for shard in shards]
            gathered = dist.all_gather_rows(local, counts)  # the shards' rows, in shard order
            values = gathered[0] if len(gathered) == 1 else torch.cat(gathered)
            offsets = torch.empty(len(corpus), dtype=torch.long)
            cursor = 0
            for row in (row for shard in shards for row in shard):
                offsets[row] = cursor
                cursor += lengths[row]
            self.token_cache = TokenCache(
                values=values,
                offsets=offsets,
                lengths=torch.tensor(lengths),
                layers=self.hidden_layers,
                num_layers=self._num_layers(),
            )
            tensors.update(hidden=values, offsets=offsets)
        self.cache = full
        if dist.is_main:
            with atomic_path(path) as tmp:
                save_file(tensors, str(tmp), metadata={"fingerprint": fingerprint})
        dist.barrier()

    def _token_mb(self, corpus: TokenizedCorpus) -> float:
        """Size of the token-level cache in MB (fp16, real tokens only)."""
        return sum(corpus.lengths) * len(self.hidden_layers) * self.model.config.hidden_size * 2 / 2**20

    def _num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @staticmethod
    def _gather_rows(rows: list[torch.Tensor], shards: list[list[int]], dist: DistContext) -> torch.Tensor:
        local = torch.cat(rows) if rows else torch.zeros(0)
        gathered = dist.all_gather_rows(local, [len(s) for s in shards])
        full = torch.empty((sum(len(s) for s in shards), *gathered[0].shape[1:]), dtype=torch.float32)
        for shard, values in zip(shards, gathered):
            full[shard] = values.float()
        return full


@dataclass(frozen=True)
class TokenCache:
    """Teacher hidden states of some layers for every real token of the corpus, without padding:
    row ``i``'s tokens are ``values[offsets[i] : offsets[i] + lengths[i]]``, ``[tokens, layers, hidden]``."""

    values: torch.Tensor
    offsets: torch.Tensor  # [rows] int64
    lengths: torch.Tensor  # [rows] int64
    layers: tuple[int, ...]  # the teacher layer of each values[:, k]
    num_layers: int  # teacher layers in all

    def batch(self, index: torch.Tensor, *, width: int) -> tuple[torch.Tensor | None, ...]:
        """Right-padded ``[batch, width, hidden]`` states per teacher layer (``None``: not cached)."""
        positions = torch.arange(width).unsqueeze(0)
        real = positions < self.lengths[index].unsqueeze(1)  # [batch, width]
        padded = torch.zeros((len(index), width, *self.values.shape[1:]), dtype=torch.float32)
        padded[real] = self.values[(self.offsets[index].unsqueeze(1) + positions)[real]].float()
        by_layer: list[torch.Tensor | None] = [None] * self.num_layers
        for k, layer in enumerate(self.layers):
            by_layer[layer] = padded[:, :, k]
        return tuple(by_layer)


def _read_cache(path: Path, fingerprint: str) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as fh:
        if (fh.metadata() or {}).get("fingerprint") != fingerprint:
            return None
        return {name: fh.get_tensor(name) for name in fh.keys()}
