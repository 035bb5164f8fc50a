"""What the single-stage commands share: ``--recipe`` with ``--set``, each stage flag's recipe key (a flag
given wins over the recipe and names itself in an error), the task and the model reference a command works on.

Place in the layers: the CLI layer (the command modules beside it import it; ``modelpress.cli`` does not)."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

from modelpress.config_check import field_default
from modelpress.errors import BadInputError
from modelpress.models import resolve_model_ref
from modelpress.paths import refuse_inside_bundle
from modelpress.recipe import load_recipe, recipe_from_dict
from modelpress.tasks import configure_task


def stage_recipe(args) -> Any:
    """The recipe named by ``--recipe`` (with ``--set``), or None."""
    if not args.recipe:
        if args.overrides:
            raise BadInputError("--set needs --recipe")
        return None

    return load_recipe(args.recipe, args.overrides)


#: a stage command's flag → the recipe key it sets under ``--recipe`` (its value wins over the recipe's)
FLAG_KEYS = {
    "export": {
        "model": "student",
        "task": "task",
        "opset": "export.opset",
        "atol": "export.atol",
        "trust_remote_code": "trust_remote_code",
    },
    "quantize": {
        "task": "task",
        "data": "calibration.data",
        "text_field": "calibration.text_field",
        "num_samples": "calibration.num_samples",
        "max_length": "calibration.max_length",
        "method": "quantize.calibration_method",
        "percentile": "quantize.percentile",
        "preset": "quantize.preset",
        "format": "quantize.format",
        "no_smoothquant": "quantize.smoothquant",
        "exclude": "quantize.nodes_to_exclude",
        "target": "target",
    },
    "validate": {
        "teacher": "teacher",
        "task": "task",
        "eval_data": "validate.eval_data",
        "eval_format": "validate.eval_format",
        "batch_sizes": "validate.batch_sizes",
        "seq_lengths": "validate.seq_lengths",
        "num_samples": "validate.num_samples",
        "max_drop": "gate.max_drop",
        "runtime": "validate.runtimes",
    },
}


def flag_value(dest: str, value: Any) -> Any:
    """A flag's value as its recipe key takes it (``None``: the flag was not given)."""
    if value is None or value is False:
        return None
    if dest == "no_smoothquant":
        return False
    if dest == "runtime":
        return [value]
    return list(value) if isinstance(value, (list, tuple)) else value


def given_flags(args) -> dict[str, tuple[str, Any]]:
    """{recipe key: (flag, value)} of the stage flags given on the command line."""
    given = {}
    for dest, key in FLAG_KEYS[args.command].items():
        value = flag_value(dest, getattr(args, dest, None))
        if value is not None:
            given[key] = ("MODEL" if dest == "model" else f"--{dest.replace('_', '-')}", value)
    return given


def recipe_with_flags(args, given: dict[str, tuple[str, Any]]) -> Any:
    """``--recipe`` (with ``--set``) and the stage flags ``given`` on top of it, as if written in the
    recipe (a written length the model cannot take is refused, not clipped)."""
    recipe = stage_recipe(args)
    raw = copy.deepcopy(dict(recipe.raw))
    for key, (_, value) in given.items():
        *sections, name = key.split(".")
        table = raw
        for section in sections:
            table = table.setdefault(section, {})
        table[name] = value
        if key == "task" and value != recipe.task:
            raw.pop("task_options", None)  # a --task of its own: its defaults
    return recipe_from_dict(raw, source=Path(recipe.source) if recipe.source else None)


@contextlib.contextmanager
def flags_named(given: dict[str, tuple[str, Any]]):
    """An error about a recipe key a flag set names the flag (``--seq-lengths: ...``)."""
    try:
        yield
    except BadInputError as exc:
        key = next((k for k in given if str(exc).startswith(f"{k}:")), None)
        if key is None:
            raise
        raise BadInputError(given[key][0] + str(exc)[len(key) :]) from None


def pick(flag: Any, recipe: Any, section: str, key: str, cls: type) -> Any:
    """A flag's value, else the recipe's, else the dataclass default."""
    if flag is not None:
        return flag
    if recipe is not None:
        return getattr(getattr(recipe, section) if section else recipe, key)
    return field_default(cls, key)


def task_for(args, recipe, model_ref: str | None):
    name = args.task or (recipe.task if recipe else "feature-extraction")
    options = recipe.task_options if recipe and not args.task else {}  # a --task of its own: its defaults
    return configure_task(name, options, model_dir=model_ref if model_ref and Path(model_ref).is_dir() else None)


def model_ref(given: str | None, recipe, what: str) -> str:
    ref = given or (
        recipe.student or recipe.teacher if recipe and what == "model" else recipe.teacher if recipe else None
    )
    if not ref:
        raise BadInputError(f"{what}: give it, or --recipe")
    return resolve_model_ref(ref)


def refuse_bundle_file(out: str) -> None:
    """A stage's output file must not land in a bundle (its manifest would no longer match)."""
    refuse_inside_bundle(Path(out))
