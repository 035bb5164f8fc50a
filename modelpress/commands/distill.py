"""``modelpress distill``: train the student of a recipe (torchrun-compatible: only rank 0 prints).

Place in the layers: the CLI layer, under ``modelpress.cli``, which names this module in its command
table and imports it only when the command runs."""

from __future__ import annotations

import os
from pathlib import Path

from modelpress.distill.stage import train_student
from modelpress.errors import EXIT_OK
from modelpress.models import resolve_model_ref
from modelpress.paths import refuse_inside_bundle
from modelpress.recipe import load_recipe
from modelpress.tasks import configure_task


def cmd_distill(args) -> int:
    refuse_inside_bundle(Path(args.out))
    recipe = load_recipe(args.recipe, args.overrides)
    teacher_ref = resolve_model_ref(recipe.teacher)
    task = configure_task(
        recipe.task, recipe.task_options, model_dir=teacher_ref if Path(teacher_ref).is_dir() else None
    )
    student = train_student(recipe, teacher_ref, task, Path(args.out))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"student: {student}")
    return EXIT_OK
