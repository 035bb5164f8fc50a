"""The ``[distill]`` recipe section as typed, frozen dataclasses (first stage of the pipeline).

``DistillConfig.from_dict(section, base_dir=...)`` turns the recipe's ``[distill]`` table (and its
``[distill.losses]`` sub-table) into a :class:`DistillConfig`; unknown keys and bad values raise
:class:`BadInputError` naming ``distill.<key>``. Only the standard library is imported here, so
loading a recipe never pulls in torch.

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
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from modelpress.errors import BadInputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LAYER_SELECTIONS = ("agreement", "spread")
LOSS_NAMES = ("embedding_mse", "embedding_cos", "similarity_mse", "kl", "ce", "hidden_mse", "attention_kl")


@dataclass(frozen=True)
class LossWeights:
    """``[distill.losses]``: the weight of each loss in the total; ``None`` = the task's default.

    Task defaults: feature-extraction ``embedding_mse = 1``, ``embedding_cos = 1``;
    text-classification ``kl = 1`` and ``ce = 1`` when ``distill.label_field`` is set. Every other
    loss defaults to 0 (off). Weights are non-negative; the total is ``sum(weight * loss)``.
    """

    embedding_mse: float | None = None  # MSE between pooled student and teacher embeddings
    embedding_cos: float | None = None  # 1 - cosine between pooled student and teacher embeddings
    similarity_mse: float | None = None  # MSE between in-batch cosine-similarity matrices
    kl: float | None = None  # soft-target KL(teacher || student) on logits, scaled by temperature²
    ce: float | None = None  # cross-entropy of student logits against hard labels (label_field)
    hidden_mse: float | None = None  # MSE of each student layer's output vs its mapped teacher layer
    attention_kl: float | None = None  # KL of attention distributions per mapped layer (eager attention)

    @classmethod
    def from_dict(cls, d: Any) -> "LossWeights":
        if not isinstance(d, Mapping):
            raise BadInputError("distill.losses: expected a table of loss weights")
        unknown = sorted(set(d) - set(LOSS_NAMES))
        if unknown:
            raise BadInputError(
                f"distill.losses.{unknown[0]}: unknown loss (known: {', '.join(LOSS_NAMES)})"
            )
        values = {}
        for name, value in d.items():
            if value is None:  # JSON null: the task default
                continue
            weight = _as_float(f"losses.{name}", value)
            if weight < 0:
                raise BadInputError(f"distill.losses.{name}: must be >= 0, got {value}")
            values[name] = weight
        return cls(**values)

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
    label_field: str | None = None  # field holding gold labels (text-classification); enables ce
    num_samples: int | None = None  # use a deterministic sample of this many texts (None: all)
    max_length: int = 128  # tokens per text; longer texts are truncated
    # --- the student (exactly one of the four) ---
    layers: tuple[int, ...] | None = None  # teacher layers to keep, e.g. [0, 2, 4] (DistilBERT-style init)
    num_layers: int | None = None  # keep this many evenly spaced teacher layers (6 → 3 keeps 0, 2, 4)
    student: str | None = None  # folder / hub id / package:<name> of another model, or of a config only
    student_config: Mapping[str, Any] | None = None  # teacher config overrides → randomly initialised
    layer_selection: str = "agreement"  # num_layers: "agreement" (scored on held-out texts) | "spread"
    layer_map: tuple[int, ...] | None = None  # teacher layer each student layer imitates (hidden/attn losses)
    dropout: float | None = 0.0  # dropout while distilling (None: the model's own); the saved config keeps its own
    freeze_embeddings: bool = True  # keep the teacher's token-embedding matrix (pretrained students only)
    # --- optimisation ---
    epochs: int = 3  # passes over the training texts
    max_steps: int = 0  # > 0: stop after this many optimizer steps instead (cycling epochs as needed)
    batch_size: int = 64  # global batch per optimizer step; divisible by processes × grad_accum
    grad_accum: int = 1  # micro-steps per optimizer step (each process: batch_size / (procs × grad_accum))
    lr: float = 5e-4  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay (not applied to biases / norms)
    warmup_ratio: float = 0.05  # fraction of the steps with linear warm-up; linear decay to 0 after
    max_grad_norm: float = 1.0  # gradient clipping by global norm (0: off)
    temperature: float = 2.0  # softmax temperature of the soft-target KL (Hinton et al.)
    losses: LossWeights = field(default_factory=LossWeights)  # [distill.losses] table
    precision: str = "auto"  # fp32 | bf16 | fp16 | auto (bf16 where native: CUDA or AVX512-BF16/AMX CPUs)
    group_by_length: bool = True  # batch texts of similar length together (less padding)
    # --- evaluation, checkpoints, caching ---
    eval_fraction: float = 0.02  # held-out share of the corpus for evaluation against the teacher (0: off)
    eval_every: int = 0  # evaluate every N optimizer steps (0: at the end of each epoch); best is kept
    save_every: int = 200  # write a resumable checkpoint every N optimizer steps (and at the end)
    cache_teacher: bool = True  # compute teacher targets once, keep them on disk (see cache_teacher_max_mb)
    cache_teacher_max_mb: float = 4096.0  # hidden_mse: cache the mapped layers' token states when they fit
    seed: int = 0  # data order, splits and initialisation of new parameters

    def __post_init__(self) -> None:
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
            if any(i < 0 for i in self.layers) or list(self.layers) != sorted(set(self.layers)):
                raise BadInputError(
                    f"distill.layers: expected increasing, distinct layer indices >= 0, got {list(self.layers)}"
                )
        if self.layer_selection not in LAYER_SELECTIONS:
            raise BadInputError(
                f"distill.layer_selection: expected one of {', '.join(LAYER_SELECTIONS)}, got {self.layer_selection!r}"
            )
        if self.layer_map is not None and any(i < 0 for i in self.layer_map):
            raise BadInputError(f"distill.layer_map: layer indices must be >= 0, got {list(self.layer_map)}")
        if self.precision not in PRECISIONS:
            raise BadInputError(
                f"distill.precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if not 0.0 <= self.eval_fraction < 1.0:
            raise BadInputError(f"distill.eval_fraction: must be in [0, 1), got {self.eval_fraction}")
        if self.cache_teacher_max_mb < 0:
            raise BadInputError(f"distill.cache_teacher_max_mb: must be >= 0, got {self.cache_teacher_max_mb}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise BadInputError(f"distill.warmup_ratio: must be in [0, 1], got {self.warmup_ratio}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise BadInputError(f"distill.dropout: must be in [0, 1), got {self.dropout}")
        for key in ("lr", "temperature"):
            if getattr(self, key) <= 0:
                raise BadInputError(f"distill.{key}: must be > 0, got {getattr(self, key)}")
        for key in ("weight_decay", "max_grad_norm"):
            if getattr(self, key) < 0:
                raise BadInputError(f"distill.{key}: must be >= 0, got {getattr(self, key)}")
        for key in ("max_length", "batch_size", "grad_accum", "epochs", "save_every"):
            if getattr(self, key) < 1:
                raise BadInputError(f"distill.{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("max_steps", "eval_every"):
            if getattr(self, key) < 0:
                raise BadInputError(f"distill.{key}: must be >= 0, got {getattr(self, key)}")
        if self.num_samples is not None and self.num_samples < 2:
            raise BadInputError(f"distill.num_samples: must be >= 2, got {self.num_samples}")
        if self.num_layers is not None and self.num_layers < 1:
            raise BadInputError(f"distill.num_layers: must be >= 1, got {self.num_layers}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, base_dir: Path) -> "DistillConfig":
        """Validate a recipe's ``[distill]`` table; relative paths are resolved against ``base_dir``."""
        if not isinstance(d, Mapping):
            raise BadInputError("distill: expected a table")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise BadInputError(f"distill.{unknown[0]}: unknown key (known: {', '.join(known)})")
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            kwargs[key] = _PARSERS[key](key, value, base_dir)
        return cls(**kwargs)

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


# --- value parsers: one per key; each names the key in its error --------------------------------

def _as_bool(key: str, value: Any, _base: Path | None = None) -> bool:
    if not isinstance(value, bool):
        raise BadInputError(f"distill.{key}: expected true or false, got {value!r}")
    return value


def _as_int(key: str, value: Any, _base: Path | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInputError(f"distill.{key}: expected an integer, got {value!r}")
    return value


def _as_float(key: str, value: Any, _base: Path | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadInputError(f"distill.{key}: expected a number, got {value!r}")
    return float(value)


def _as_str(key: str, value: Any, _base: Path | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise BadInputError(f"distill.{key}: expected a non-empty string, got {value!r}")
    return value


def _optional(parse):
    def parse_optional(key: str, value: Any, base: Path | None = None):
        return None if value is None else parse(key, value, base)
    return parse_optional


def _as_int_list(key: str, value: Any, _base: Path | None = None) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise BadInputError(f"distill.{key}: expected a list of integers, got {value!r}")
    return tuple(_as_int(key, v) for v in value)


def _as_path(key: str, value: Any, base: Path | None) -> Path:
    path = Path(_as_str(key, value)).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path


def _as_model_ref(key: str, value: Any, base: Path | None) -> str:
    """A folder relative to the recipe becomes absolute; hub ids and package: refs stay as given."""
    ref = _as_str(key, value)
    if not ref.startswith("package:") and base is not None:
        candidate = Path(base) / ref
        if not Path(ref).expanduser().is_absolute() and candidate.exists():
            return str(candidate.resolve())
    return ref


def _as_table(key: str, value: Any, _base: Path | None = None) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not value:
        raise BadInputError(f"distill.{key}: expected a non-empty table of config overrides")
    for k in value:
        if not isinstance(k, str):
            raise BadInputError(f"distill.{key}: keys must be strings, got {k!r}")
    return MappingProxyType(dict(value))


def _as_losses(key: str, value: Any, _base: Path | None = None) -> LossWeights:
    return LossWeights.from_dict(value)


def _as_precision(key: str, value: Any, _base: Path | None = None) -> str:
    return _as_str(key, value).lower()


_PARSERS = {
    "enabled": _as_bool,
    "data": _optional(_as_path),
    "text_field": _as_str,
    "label_field": _optional(_as_str),
    "num_samples": _optional(_as_int),
    "max_length": _as_int,
    "layers": _optional(_as_int_list),
    "num_layers": _optional(_as_int),
    "student": _optional(_as_model_ref),
    "student_config": _optional(_as_table),
    "layer_selection": _as_str,
    "layer_map": _optional(_as_int_list),
    "dropout": _optional(_as_float),
    "freeze_embeddings": _as_bool,
    "epochs": _as_int,
    "max_steps": _as_int,
    "batch_size": _as_int,
    "grad_accum": _as_int,
    "lr": _as_float,
    "weight_decay": _as_float,
    "warmup_ratio": _as_float,
    "max_grad_norm": _as_float,
    "temperature": _as_float,
    "losses": _as_losses,
    "precision": _as_precision,
    "group_by_length": _as_bool,
    "eval_fraction": _as_float,
    "eval_every": _as_int,
    "save_every": _as_int,
    "cache_teacher": _as_bool,
    "cache_teacher_max_mb": _as_float,
    "seed": _as_int,
}
assert set(_PARSERS) == {f.name for f in dataclasses.fields(DistillConfig)}
