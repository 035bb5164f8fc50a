"""Build the student that distillation trains (and that export later reads as an HF folder).

Three ways, chosen by the recipe:
  * a layer subset of the teacher (``layers`` / ``num_layers``): a copy of the teacher with only the
    chosen encoder layers, so it starts from the teacher's weights (DistilBERT-style) and keeps the
    teacher's embeddings, pooler and task head;
  * another model (``student``): a folder / hub id with weights is loaded, one with only a config is
    randomly initialised; a classification head is copied from the teacher where shapes match;
  * ``student_config``: the teacher's config with overrides (e.g. a smaller hidden size), randomly
    initialised.
The student always uses the teacher's preprocessor (tokenizer or image processor: the targets are
computed on the same inputs).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from modelpress.distill.architectures import layer_spec
from modelpress.distill.config import DistillConfig
from modelpress.distill.task_view import DistillTaskView
from modelpress.errors import BadInputError
from modelpress.models import resolve_model_ref
import transformers
from transformers import AutoTokenizer
from transformers import AutoConfig

_DERIVED_CONFIG_KEYS = ("stage_names", "out_features", "out_indices")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class StudentBuild:
    """The built student and how its layers relate to the teacher's."""

    model: nn.Module
    layer_map: tuple[int, ...]  # teacher layer (0-based) whose output student layer i imitates
    kept_layers: tuple[int, ...] | None  # teacher layers the student was cut from (layer subsets)
    pretrained: bool  # False when the student's weights are a random initialisation


def evenly_spaced_layers(teacher_layers: int, num_layers: int) -> tuple[int, ...]:
    """``num_layers`` teacher layer indices spread evenly from layer 0 (6 → 3: 0, 2, 4)."""
    if not 1 <= num_layers <= teacher_layers:
        raise BadInputError(
            f"distill.num_layers: must be between 1 and the teacher's {teacher_layers} layers, got {num_layers}"
        )
    return tuple(sorted({(i * teacher_layers) // num_layers for i in range(num_layers)}))


def default_layer_map(
    *, student_layers: int, teacher_layers: int, kept: Sequence[int] | None = None
) -> tuple[int, ...]:
    """Teacher layer each student layer imitates.

    For a subset the student layer cut from teacher layer ``kept[i]`` stands for teacher layers
    ``kept[i] .. kept[i+1]-1`` and imitates the output of the last of them; otherwise student
    layers are spread uniformly over the teacher's, ending on the teacher's last layer.
    """
    if kept is not None:
        return tuple(list(k - 1 for k in kept[1:]) + [teacher_layers - 1])
    return tuple(((i + 1) * teacher_layers) // student_layers - 1 for i in range(student_layers))


def _layer_stack(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    spec = layer_spec(model.config.model_type)
    parent = model.base_model
    *path, name = spec.layers_path.split(".")
    for attr in path:
        parent = getattr(parent, attr)
    return parent, name, getattr(parent, name)


def build_layer_subset(teacher_model: nn.Module, layers: Sequence[int]) -> nn.Module:
    """A trainable copy of ``teacher_model`` keeping only encoder ``layers`` (embeddings and head kept)."""
    student = copy.deepcopy(teacher_model)
    parent, name, stack = _layer_stack(student)
    bad = [i for i in layers if not 0 <= i < len(stack)]
    if bad or not layers:
        raise BadInputError(f"distill.layers: teacher has layers 0..{len(stack) - 1}; cannot keep {list(layers)}")
    kept = nn.ModuleList([stack[i] for i in layers])
    for new_index, layer in enumerate(kept):
        for module in layer.modules():  # per-layer cache indices must follow the new numbering
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    setattr(parent, name, kept)
    setattr(student.config, layer_spec(student.config.model_type).num_layers_attr, len(layers))
    per_layer = getattr(student.config, "layer_types", None)  # decoders: attention kind per layer
    if isinstance(per_layer, list) and len(per_layer) == len(stack):
        student.config.layer_types = [per_layer[i] for i in layers]
    student.requires_grad_(True)
    return student


def set_dropout(model: nn.Module, p: float) -> None:
    """Set every dropout probability in ``model`` (its saved config keeps the original values)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p


def auto_class(spec: DistillTaskView):

    return getattr(transformers, spec.auto_class)


def _has_weights(ref: str) -> bool:
    folder = Path(ref)
    if not folder.is_dir():
        return True  # a hub id: from_pretrained fetches weights
    return any((folder / name).is_file() for name in WEIGHT_FILES)


def _head_kwargs(teacher_config: Any, spec: DistillTaskView) -> dict[str, Any]:
    if not spec.has_labels:
        return {}
    return {
        "num_labels": teacher_config.num_labels,
        "id2label": dict(teacher_config.id2label),
        "label2id": dict(teacher_config.label2id),
    }


def _copy_head(teacher_model: nn.Module, student: nn.Module) -> list[str]:
    """Copy parameters outside the base model (the task head) whose names and shapes match."""
    prefix = teacher_model.base_model_prefix + "."
    student_state = student.state_dict()
    copied = []
    with torch.no_grad():
        for name, tensor in teacher_model.state_dict().items():
            if name.startswith(prefix) or name not in student_state:
                continue
            if student_state[name].shape == tensor.shape:
                student_state[name].copy_(tensor)
                copied.append(name)
    return copied


def _check_vocab(student_ref: str, tokenizer: Any) -> None:
    folder = Path(student_ref)
    if not folder.is_dir() or not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        return

    if AutoTokenizer.from_pretrained(student_ref).get_vocab() != tokenizer.get_vocab():
        raise BadInputError(
            f"distill.student: {student_ref} has its own vocabulary; the student must share the teacher's"
        )


def _load_other_student(
    cfg: DistillConfig, teacher_model: nn.Module, spec: DistillTaskView, *, attn_implementation: str | None
) -> tuple[nn.Module, bool]:

    cls = auto_class(spec)
    attn = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if cfg.student_config is not None:
        teacher_config = teacher_model.config  # carries the teacher's labels
        for key in cfg.student_config:
            if not hasattr(teacher_config, key):
                raise BadInputError(f"distill.student_config.{key}: not a key of the teacher's config")
        # built anew, not patched: what a config derives from its keys (a CNN's stage names from
        # its depths) must follow the overrides; a backbone's stage names and outputs are re-derived
        merged = {k: v for k, v in teacher_config.to_dict().items() if k not in _DERIVED_CONFIG_KEYS}
        merged.update(cfg.student_config)
        try:
            config = type(teacher_config).from_dict(merged)
        except (TypeError, ValueError) as exc:
            raise BadInputError(f"distill.student_config: {str(exc).splitlines()[0]}") from None
        return cls.from_config(config, **attn), False
    ref = resolve_model_ref(cfg.student)  # type: ignore[arg-type]  # cfg.student is set on this path (no layer subset)
    head = _head_kwargs(teacher_model.config, spec)
    try:
        if _has_weights(ref):
            return cls.from_pretrained(ref, dtype=torch.float32, **head, **attn), True
        return cls.from_config(AutoConfig.from_pretrained(ref, **head), **attn), False
    except (OSError, ValueError) as exc:
        raise BadInputError(f"distill.student: cannot load '{cfg.student}' ({str(exc).splitlines()[0]})") from None


def build_student(
    cfg: DistillConfig,
    teacher_model: nn.Module,
    spec: DistillTaskView,
    *,
    tokenizer: Any,
    attn_implementation: str | None = None,
) -> StudentBuild:
    """The student named by the recipe, on CPU, in training mode, with the recipe's dropout/freezing.

    ``num_layers`` means evenly spaced layers here; ``run_distillation`` first turns
    ``layer_selection = "agreement"`` into explicit ``layers`` (:mod:`distill.layer_selection`)."""
    teacher_layers = getattr(teacher_model.config, "num_hidden_layers", None)  # CNNs count stages instead
    kept: tuple[int, ...] | None = None
    if cfg.layers is not None or cfg.num_layers is not None:
        kept = cfg.layers if cfg.layers is not None else evenly_spaced_layers(teacher_layers, cfg.num_layers)  # type: ignore[arg-type]  # num_layers is set here (the test above); a teacher without layers fails inside
        student, pretrained = build_layer_subset(teacher_model, kept), True
    else:
        torch.manual_seed(cfg.seed)  # same random init on every process
        student, pretrained = _load_other_student(cfg, teacher_model, spec, attn_implementation=attn_implementation)
        if cfg.student is not None:
            _check_vocab(resolve_model_ref(cfg.student), tokenizer)
        if spec.has_labels:
            _copy_head(teacher_model, student)
    vocab_size = getattr(student.config, "vocab_size", None)
    if vocab_size is not None and hasattr(tokenizer, "get_vocab") and vocab_size < len(tokenizer):
        raise BadInputError(
            f"distill.student: vocab_size {student.config.vocab_size} is smaller than the teacher "
            f"tokenizer's {len(tokenizer)}"
        )
    student_layers = getattr(student.config, "num_hidden_layers", None)
    if cfg.layer_map is not None and (student_layers is None or teacher_layers is None):
        raise BadInputError("distill.layer_map: the teacher or the student has no layer stack to map")
    if student_layers is None or teacher_layers is None:
        layer_map: tuple[int, ...] = ()
    elif cfg.layer_map is not None:
        if len(cfg.layer_map) != student_layers or max(cfg.layer_map) >= teacher_layers:
            raise BadInputError(
                f"distill.layer_map: expected {student_layers} teacher layer indices in 0..{teacher_layers - 1}, "
                f"got {list(cfg.layer_map)}"
            )
        layer_map = tuple(cfg.layer_map)
    else:
        layer_map = default_layer_map(student_layers=student_layers, teacher_layers=teacher_layers, kept=kept)
    student.to(torch.float32)
    student.train()
    student.requires_grad_(True)
    if cfg.dropout is not None:
        set_dropout(student, cfg.dropout)
    if cfg.freeze_embeddings and pretrained:  # token embeddings; a ViT's patch embedding
        student.get_input_embeddings().requires_grad_(False)
    return StudentBuild(model=student, layer_map=layer_map, kept_layers=kept, pretrained=pretrained)
