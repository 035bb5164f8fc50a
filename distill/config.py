"""The ``[distill]`` recipe section as typed, frozen dataclasses (first stage of the pipeline).

The recipe loader checks the ``[distill]`` table (and its ``[distill.losses]`` sub-table) with the
one config checker (:mod:`modelpress.config_check`): types come from the annotations below,
ranges from the fields' metadata, the rules between keys from ``__post_init__``; errors name
``distill.<key>``. Only the standard library is imported here, so loading a recipe never pulls in torch.

A recipe overrides only what differs, e.g.::

    [distill]
    data = "data/corpus.txt"
    layers = [0, 2, 4]

    [distill.losses]
    hidden_mse = 1.0
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from modelpress.errors import BadInputError
from modelpress.config_check import check_fields
from modelpress.config_check import PathRule, check_section

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LAYER_SELECTIONS = ("agreement", "spread")
LOSS_NAMES = ("embedding_mse", "embedding_cos", "similarity_mse", "kl", "ce", "hidden_mse", "attention_kl")


def _weight():
    return field(default=None, metadata={"min": 0.0})


@dataclass(frozen=True)
class LossWeights:
    """``[distill.losses]``: the weight of each loss in the total; ``None`` = the task's default.

    Task defaults (the task registry's ``DistillSpec``): feature-extraction ``embedding_mse = 1``,
    ``embedding_cos = 1``; text- and token-classification ``kl = 1``, and ``ce = 1`` when gold labels
    are given. Every other loss defaults to 0 (off). The total is ``sum(weight * loss)``.
    """

    embedding_mse: float | None = _weight()  # MSE between pooled student and teacher embeddings
    embedding_cos: float | None = _weight()  # 1 - cosine between pooled student and teacher embeddings
    similarity_mse: float | None = _weight()  # MSE between in-batch cosine-similarity matrices
    kl: float | None = _weight()  # soft-target KL(teacher || student) on logits (per real token for taggers), × T²
    ce: float | None = _weight()  # cross-entropy against gold labels / tags (label_field)
    hidden_mse: float | None = _weight()  # MSE of each student layer's output vs its mapped teacher layer
    attention_kl: float | None = _weight()  # KL of attention distributions per mapped layer (eager attention)

    def __post_init__(self) -> None:

        check_fields(self, "distill.losses")

    def resolve(self, defaults: Mapping[str, float]) -> dict[str, float]:
        """Every loss name → its weight, task defaults filled in for the unset ones."""
        return {
            name: (getattr(self, name) if getattr(self, name) is not None else defaults.get(name, 0.0))
            for name in LOSS_NAMES
        }


@dataclass(frozen=True)
class DistillConfig:
    """Everything the ``[distill]`` section can say; defaults are what an empty section means.

    The student is named by exactly one of ``layers``, ``num_layers``, ``student`` or
    ``student_config``. ``batch_size`` is the global batch (all processes, all accumulation
    micro-steps together), so a run's result does not depend on how many processes train it.
    A recipe without a ``[distill]`` section is ``DistillConfig(enabled=False)``.
    """

    enabled: bool = True  # false: `modelpress run` skips distillation and deploys the teacher
    data: Path | None = None  # corpus (.txt/.jsonl/.csv/.tsv/datasets folder); required when enabled
    text_field: str = "text"  # field/column holding the text in structured corpora
    image_field: str = (
        "image"  # image models: field/column holding the image path in .jsonl/.csv, or the datasets Image column
    )
    label_field: str | None = (
        None  # field holding gold labels (text/image classification; an imagefolder's class folders); enables ce
    )
    num_samples: int | None = field(
        default=None, metadata={"min": 2}
    )  # use a deterministic sample of this many texts (None: all)
    max_length: int = field(default=128, metadata={"min": 1})  # tokens per text; longer texts are truncated
    # --- the student (exactly one of the four) ---
    layers: tuple[int, ...] | None = field(
        default=None, metadata={"min": 0}
    )  # teacher layers to keep, e.g. [0, 2, 4] (DistilBERT-style init)
    num_layers: int | None = field(
        default=None, metadata={"min": 1}
    )  # keep this many evenly spaced teacher layers (6 → 3 keeps 0, 2, 4)
    student: str | None = field(
        default=None, metadata={"path": True}
    )  # folder / hub id / package:<name> of another model, or of a config only
    student_config: Mapping[str, Any] | None = None  # teacher config overrides → randomly initialised
    layer_selection: str = field(
        default="agreement", metadata={"choices": LAYER_SELECTIONS}
    )  # num_layers: "agreement" (scored on held-out texts) | "spread"
    layer_selection_texts: int = field(
        default=2000, metadata={"min": 1}
    )  # "agreement": corpus texts each candidate subset is scored on
    layer_map: tuple[int, ...] | None = field(
        default=None, metadata={"min": 0}
    )  # teacher layer each student layer imitates (hidden/attn losses)
    dropout: float | None = 0.0  # dropout while distilling (None: the model's own); the saved config keeps its own
    freeze_embeddings: bool = True  # keep the teacher's token-embedding matrix (pretrained students only)
    # --- optimisation ---
    epochs: int = field(default=3, metadata={"min": 1})  # passes over the training texts
    max_steps: int = field(
        default=0, metadata={"min": 0}
    )  # > 0: stop after this many optimizer steps instead (cycling epochs as needed)
    batch_size: int = field(
        default=64, metadata={"min": 1}
    )  # global batch per optimizer step; divisible by processes × grad_accum
    grad_accum: int = field(
        default=1, metadata={"min": 1}
    )  # micro-steps per optimizer step (each process: batch_size / (procs × grad_accum))
    lr: float = field(default=5e-4, metadata={"gt": 0.0})  # AdamW peak learning rate
    weight_decay: float = field(
        default=0.01, metadata={"min": 0.0}
    )  # AdamW decoupled weight decay (not applied to biases / norms)
    warmup_ratio: float = field(
        default=0.05, metadata={"min": 0.0, "max": 1.0}
    )  # fraction of the steps with linear warm-up; linear decay to 0 after
    max_grad_norm: float = field(default=1.0, metadata={"min": 0.0})  # gradient clipping by global norm (0: off)
    temperature: float = field(
        default=2.0, metadata={"gt": 0.0}
    )  # softmax temperature of the soft-target KL (Hinton et al.)
    losses: LossWeights = field(default_factory=LossWeights)  # [distill.losses] table
    precision: str = "auto"  # fp32 | bf16 | fp16 | auto (bf16 where native: CUDA or AVX512-BF16/AMX CPUs)
    group_by_length: bool = True  # batch texts of similar length together (less padding)
    # --- evaluation, checkpoints, caching ---
    eval_fraction: float = 0.02  # held-out share of the corpus for evaluation against the teacher (0: off)
    eval_every: int = field(
        default=0, metadata={"min": 0}
    )  # evaluate every N optimizer steps (0: at the end of each epoch); best is kept
    save_every: int = field(
        default=200, metadata={"min": 1}
    )  # write a resumable checkpoint every N optimizer steps (and at the end)
    cache_teacher: bool = True  # compute teacher targets once, keep them on disk (see cache_teacher_max_mb)
    cache_teacher_max_mb: float = field(
        default=4096.0, metadata={"min": 0.0}
    )  # hidden_mse: cache the mapped layers' token states when they fit
    seed: int = 0  # data order, splits and initialisation of new parameters

    def __post_init__(self) -> None:

        object.__setattr__(self, "precision", self.precision.lower())
        check_fields(self, "distill")
        if not self.enabled:
            return
        if self.data is None:
            raise BadInputError("distill.data: required when distillation is enabled")
        named = [k for k in ("layers", "num_layers", "student", "student_config") if getattr(self, k) is not None]
        if not named:
            raise BadInputError(
                "distill: name the student with one of distill.layers, distill.num_layers, "
                "distill.student or distill.student_config"
            )
        if len(named) > 1:
            raise BadInputError(f"distill.{named[1]}: conflicts with distill.{named[0]}; give only one")
        if self.layers is not None:
            if not self.layers:
                raise BadInputError("distill.layers: must name at least one teacher layer")
            if list(self.layers) != sorted(set(self.layers)):
                raise BadInputError(
                    f"distill.layers: expected increasing, distinct layer indices >= 0, got {list(self.layers)}"
                )
        if self.student_config is not None and not self.student_config:
            raise BadInputError("distill.student_config: expected a non-empty table of config overrides")
        if self.precision not in PRECISIONS:
            raise BadInputError(f"distill.precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise BadInputError(f"distill.eval_fraction: must be in [0, 1), got {self.eval_fraction}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise BadInputError(f"distill.dropout: must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, base_dir: Path) -> "DistillConfig":
        """The section on its own (``python -m modelpress.distill``): relative paths that exist in
        ``base_dir`` resolve there (the recipe loader uses its own, wider rule)."""

        return check_section(cls, "distill", d, rule=PathRule((Path(base_dir),)))

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view (checkpoint fingerprints, the student's distill.json)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, LossWeights):
                value = dataclasses.asdict(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return json.loads(json.dumps(out, sort_keys=True))
