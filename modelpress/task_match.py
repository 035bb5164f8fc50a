"""``--task auto``: which registered task a model folder is for, read from its ``config.json``.

Each task module declares an :class:`AutoSpec` (``Task.auto``): the ``config.architectures``
suffixes it handles (``ForTokenClassification``, ``LMHeadModel``, the bare ``Model`` of an encoder),
an optional test of the config that settles a suffix two tasks share, and the shipped data a recipe
that names none calibrates and evaluates on. :func:`modelpress.tasks.infer_task` asks every task; the longest
matching suffix wins (``GPT2LMHeadModel`` is a causal LM, not a bare ``...Model``), and no match or
a tie is one line listing the choices. Nothing here imports torch or transformers: the config is
read as JSON.

A ``*ForSequenceClassification`` head is a cross-encoder (text-ranking) when the folder says it was
saved by sentence-transformers' ``CrossEncoder`` or when it has one output (``num_labels == 1``: a
relevance score, not a class); otherwise it is a classifier (text-classification).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from modelpress.errors import BadInputError

#: what ``--task`` takes to read the task from the model
AUTO_TASK = "auto"
#: the shipped corpora (``calibration_data/``) every text task calibrates and evaluates on by default
TEXT_CALIBRATION = "calibration_data/en_default.txt"
TEXT_EVAL = "calibration_data/en_eval.jsonl"


def _any_config(config: Mapping[str, Any]) -> bool:
    return True


@dataclass(frozen=True)
class AutoSpec:
    """What a task says to ``--task auto`` and to a recipe that names no data."""

    #: ``config.architectures`` entries this task handles, by suffix (``ForTokenClassification``)
    architectures: tuple[str, ...] = ()
    #: among the models those suffixes match, the ones this task takes (the config as parsed JSON)
    accepts: Callable[[Mapping[str, Any]], bool] = _any_config
    #: ``calibration.data`` / ``validate.eval_data`` when the recipe names none; None: nothing shipped
    #: fits, so the recipe must name its own
    calibration_data: str | None = TEXT_CALIBRATION
    eval_data: str | None = TEXT_EVAL


def num_labels(config: Mapping[str, Any]) -> int | None:
    """The head's output count as transformers derives it (``num_labels``, else ``id2label``'s size)."""
    if isinstance(config.get("num_labels"), int):
        return int(config["num_labels"])
    id2label = config.get("id2label")
    return len(id2label) if isinstance(id2label, Mapping) and id2label else None


def is_cross_encoder(config: Mapping[str, Any]) -> bool:
    """Saved by sentence-transformers' CrossEncoder (v4+ writes a ``sentence_transformers`` table,
    v2/v3 ``sbert_ce_default_activation_function``), or a single-score head."""
    if "sentence_transformers" in config or "sbert_ce_default_activation_function" in config:
        return True
    return num_labels(config) == 1


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """``config.json`` of a model folder, parsed (BadInputError, one line, when it cannot be)."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path}: cannot read the model's config ({exc})") from None
    if not isinstance(config, dict):
        raise BadInputError(f"{path}: not a model config (a JSON object)")
    return config
