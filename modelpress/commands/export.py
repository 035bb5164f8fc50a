"""``modelpress export``: a model to ONNX, parity-checked; ``--recipe`` runs the pipeline's export stage.

Place in the layers: the CLI layer, under ``modelpress.cli``, which names this module in its command
table and imports it only when the command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelpress import stage_commands
from modelpress.commands.flags import (
    flags_named,
    given_flags,
    model_ref,
    pick,
    recipe_with_flags,
    refuse_bundle_file,
    stage_recipe,
    task_for,
)
from modelpress.errors import EXIT_OK, BadInputError
from modelpress.export.exporters import export_model
from modelpress.models import load_model_and_preprocessor
from modelpress.recipe import ExportConfig, section_config


def cmd_export(args) -> int:
    if Path(args.out).is_dir():
        raise BadInputError(f"--out {args.out}: is a folder; give the .onnx file to write")
    refuse_bundle_file(args.out)
    if args.recipe:
        given = given_flags(args)
        with flags_named(given):
            result = stage_commands.export(recipe_with_flags(args, given), Path(args.out)).result
    else:
        result = _export_flags(args)
    shape = "x".join(map(str, result.parity.feed_shape))
    print(
        f"onnx: {result.path} (inputs {', '.join(result.input_names)}; parity max |diff| "
        f"{result.parity.max_abs_diff:.2e} on a {shape} batch)"
    )
    return EXIT_OK


def _export_flags(args) -> Any:
    """``modelpress export MODEL`` without a recipe: the flags and the dataclass defaults."""
    stage_recipe(args)  # --set without --recipe is refused
    opset = pick(args.opset, None, "export", "opset", ExportConfig)
    atol = pick(args.atol, None, "export", "atol", ExportConfig)
    section_config(ExportConfig, "export", {"opset": opset, "atol": atol})  # the recipe's checks on flags too
    ref = model_ref(args.model, None, "model")
    task = task_for(args, None, ref)
    model, preprocessor = load_model_and_preprocessor(ref, task, trust_remote_code=args.trust_remote_code)
    return export_model(task, model, preprocessor, args.out, opset=opset, atol=atol)
