"""``modelpress run``: a recipe file (or ``--model``, a recipe built in code) through the whole pipeline;
a passing bundle is published to ``<out>/<name>``, a failed one to ``<out>/<name>.rejected`` (exit 3).

Place in the layers: the CLI layer, under ``modelpress.cli``, which names this module in its command
table and imports it only when the command runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from modelpress.cli_model import recipe_for_model
from modelpress.cli_output import run_result
from modelpress.errors import EXIT_GATE_FAILED, EXIT_OK, BadInputError
from modelpress.pipeline import run_recipe
from modelpress.recipe import load_recipe


def cmd_run(args) -> int:
    started = time.perf_counter()
    recipe, inferred = _run_recipe(args)
    outcome = run_recipe(recipe, Path(args.out))
    args.result = run_result(outcome.bundle, seconds=time.perf_counter() - started, inferred=inferred)
    if outcome.rejected:
        kept = outcome.bundle.with_name(recipe.name)
        print(
            f"rejected: {outcome.bundle} (the gate failed; "
            + (f"the last passing bundle {kept} is unchanged)" if kept.is_dir() else "no passing bundle yet)")
        )
    else:
        print(f"bundle: {outcome.bundle}")
    if outcome.gate is not None:
        print(outcome.gate.line())
        if not outcome.gate.passed:
            return EXIT_GATE_FAILED
    return EXIT_OK


def _run_recipe(args) -> tuple[Any, dict[str, Any] | None]:
    """The recipe file (with --set, --target), or the recipe --model builds; and what --task auto read."""
    if args.recipe and args.model:
        raise BadInputError("run: give a recipe file or --model, not both")
    if not args.recipe and not args.model:
        raise BadInputError("run: give a recipe file, or --model DIR|HUB_ID to press a model without one")
    if args.recipe:
        if args.task is not None or args.revision:
            raise BadInputError("--task/--revision go with --model; in a recipe they are the keys task and revision")
        overrides = [*args.overrides, *([f'target="{args.target}"'] if args.target else [])]
        return load_recipe(args.recipe, overrides), None
    return recipe_for_model(args)
