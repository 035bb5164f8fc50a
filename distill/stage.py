"""The distill stage of a run: train (or reuse) the recipe's student, put it in the bundle, and
rebuild the untrained layer subset it started from (the report shows what distillation bought)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from modelpress.errors import BadInputError
from modelpress.paths import DISTILL_JSON, distill_dir
from modelpress.distill.pipeline import run_distillation
from modelpress.models import load_model
from modelpress.distill.student import build_layer_subset

log = logging.getLogger(__name__)


def train_student(recipe: Any, teacher_ref: str, task: Any, out_dir: Path) -> Path:
    """Train (or reuse a finished run of) the recipe's student in ``<out>/<name>.distill/``."""

    if recipe.distill is None:
        raise BadInputError("distill: the recipe has no [distill] section")
    options = {k: v for k, v in task.describe().items() if k in task.options()}  # not what the run decided
    return run_distillation(
        recipe.distill,
        teacher=teacher_ref,
        task=task.name,
        task_options=options,
        out_dir=distill_dir(Path(out_dir), recipe.name),
    )


def distill_stage(recipe: Any, teacher_ref: str, task: Any, out_dir: Path, paths: Any):
    """Train or reuse the student, copy it into the bundle, return it loaded for export."""

    student_dir = train_student(recipe, teacher_ref, task, out_dir)
    shutil.copytree(student_dir, paths.student)
    return load_model(str(paths.student), task)


def untrained_subset(student_dir: Path, teacher_model: Any):
    """The layer-subset student before training (None for other kinds of student): the teacher
    layers the distillation kept, as its ``distill.json`` records them (``layer_selection`` may
    have chosen them)."""

    summary = Path(student_dir) / DISTILL_JSON
    layers = json.loads(summary.read_text(encoding="utf-8")).get("kept_layers") if summary.is_file() else None
    return None if not layers else build_layer_subset(teacher_model, layers).eval()
