"""``modelpress run --model`` and ``modelpress init``: a recipe built in code from a model and flags.

``run --model DIR|HUB_ID`` needs no recipe file: the recipe is the dataclasses' defaults, the task
read from the model (``--task auto``, :func:`modelpress.tasks.infer_task`), the task's default
data (``Task.auto``: ``recipe_from_dict`` fills it), the name from the folder or hub id, and the
``--set`` values on top. ``init`` writes the same recipe as a commented TOML file with every key at
its value, generated from the dataclasses (their inline comments are read from the source), so the
file cannot drift from what ``run --model`` does: loading it gives the same :class:`Recipe`.
Optional sections that are off by default (``[distill]``, ``[engine]``) and unset values are written
commented out.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import json
import logging
import re
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Any, Mapping

from modelpress.errors import BadInputError
from modelpress.models import PACKAGE_PREFIX, resolve_model_ref
from modelpress.recipe import Recipe, _task_default, apply_overrides, load_recipe, recipe_from_dict, require_data
from modelpress.task_match import AUTO_TASK
from modelpress.tasks import get_task, infer_task, task_names

log = logging.getLogger("modelpress")


def add_model_flags(p: Any, *, required: bool) -> None:
    """``--model``, ``--task``, ``--revision`` (``run`` without a recipe, ``init``)."""
    p.add_argument(
        "--model",
        required=required,
        metavar="DIR|HUB_ID",
        help="the model to press, without a recipe file: a folder, a hub id or package:<module>",
    )
    p.add_argument(
        "--task",
        choices=(AUTO_TASK, *task_names()),
        default=None,
        help="with --model (default auto: read from config.json's architectures)",
    )
    p.add_argument("--revision", default=None, help="with a hub id: the branch, tag or commit to press")


def model_name(ref: str) -> str:
    """A bundle name from a folder or hub id: its last part, made a plain folder name."""
    if ref.startswith(PACKAGE_PREFIX):
        last = ref[len(PACKAGE_PREFIX) :]
    else:  # "." or "../x/" name the folder they resolve to
        last = (Path(ref).expanduser().resolve() if Path(ref).expanduser().exists() else Path(ref.rstrip("/"))).name
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", last).lstrip(".-") or "model"
    return name


def model_raw(args: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the recipe table ``--model`` and the flags write, what ``--task auto`` read). The task comes
    from the resolved folder (a hub id's snapshot); the teacher stays as given."""
    raw: dict[str, Any] = {"name": model_name(args.model), "teacher": args.model}
    if args.revision:
        raw["revision"] = args.revision
    given = {None: None, AUTO_TASK: None}.get(args.task, args.task)  # None: read it from the model
    inferred: dict[str, Any] = {"task": given, "inferred": False}
    if given is None:
        folder = resolve_model_ref(args.model, revision=args.revision)
        task, architecture = infer_task(folder)
        inferred = {"task": task, "inferred": True, "architecture": architecture}
        log.info("task %s (from config.json's %s)", task, architecture)
    raw["task"] = inferred["task"]
    if getattr(args, "target", None):
        raw["target"] = args.target
    return apply_overrides(raw, list(args.overrides)), inferred


def recipe_for_model(args: Any) -> tuple[Any, dict[str, Any]]:
    """The recipe ``run --model`` presses, and what ``--task auto`` read."""
    raw, inferred = model_raw(args)
    recipe = recipe_from_dict(raw)
    require_data(recipe)
    return recipe, inferred


# -- init: the recipe as a commented TOML file --------------------------------------------------
@functools.lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """{field: the comments written beside it (or in the lines just above it)} in ``cls``'s source."""
    source = textwrap.dedent(inspect.getsource(cls))
    by_line: dict[int, list[str]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            by_line.setdefault(tok.start[0], []).append(tok.string.lstrip("#:").strip())
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    out: dict[str, str] = {}
    previous_end = body[0].lineno - 1 if body else 0
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            lines = range(previous_end + 1, (node.end_lineno or node.lineno) + 1)
            texts = [c for line in lines for c in by_line.get(line, [])]
            if texts:
                out[node.target.id] = " ".join(texts)
        previous_end = node.end_lineno or node.lineno
    return out


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _key_lines(
    cls: type, values: Mapping[str, Any], *, commented: bool = False, skip: tuple[str, ...] = ()
) -> list[str]:
    """One ``key = value  # comment`` line per scalar field of ``cls`` (values: given, else default)."""
    comments = field_comments(cls)
    lines = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        value = values.get(f.name, _default(f))
        if dataclasses.is_dataclass(value) or f.name in ("source", "raw", "task_options") or value is None:
            if value is None and f.name not in ("source", "raw"):
                lines.append(f"# {f.name} = (unset)" + (f"  # {comments[f.name]}" if f.name in comments else ""))
            continue
        if value is dataclasses.MISSING:
            lines.append(f"# {f.name} = (required)" + (f"  # {comments[f.name]}" if f.name in comments else ""))
            continue
        line = f"{f.name} = {toml_value(value)}" + (f"  # {comments[f.name]}" if f.name in comments else "")
        lines.append(f"# {line}" if commented else line)
    return lines


def _sections() -> list[tuple[str, type, bool]]:
    """(name, class, optional) of each recipe section, in the Recipe's field order."""
    hints = typing.get_type_hints(Recipe)
    out: list[tuple[str, type, bool]] = []
    for f in dataclasses.fields(Recipe):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        cls = hint if dataclasses.is_dataclass(hint) else args[0] if len(args) == 1 else None
        if cls is not None and dataclasses.is_dataclass(cls):
            out.append((f.name, typing.cast(type, cls), f.default is None))
    return out


def recipe_toml(raw: Mapping[str, Any], *, header: str = "") -> str:
    """The recipe ``raw`` (a table as parsed: top-level keys and sections) as commented TOML, with
    every key the dataclasses define at its value (given in ``raw``, else the default; the
    ``calibration.data`` / ``validate.eval_data`` defaults are the task's)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()] + [""] if header else []
    lines += _key_lines(Recipe, raw, skip=tuple(name for name, _, _ in _sections()))
    task_cls = get_task(str(raw.get("task", Recipe.task)))
    lines += ["", f"# options of {task_cls.name} (commented: its defaults)", "[task_options]"]
    options = dict(raw.get("task_options") or {})
    option_lines = _key_lines(task_cls, options)
    lines += [line if line.split(" ")[0] in options else f"# {line}" for line in option_lines if line[:1] != "#"]
    for name, cls, optional in _sections():
        given = dict(raw.get(name) or {})
        if name == "calibration" and "data" not in given:
            given["data"] = _task_default(raw, "calibration", "data", "")
        if name == "validate" and "eval_data" not in given:
            given["eval_data"] = _task_default(raw, "validate", "eval_data", "")
        if optional and name not in raw:
            lines += ["", f"# [{name}]  (off unless this section is written)"]
            lines += [line if line.startswith("#") else f"# {line}" for line in _key_lines(cls, given)]
        else:
            lines += ["", f"[{name}]", *_key_lines(cls, given)]
    return "\n".join(lines) + "\n"


def write_init(args: Any) -> Path:
    """``modelpress init``: the recipe ``run --model`` would press, as a file."""
    out = Path(args.out)
    if out.exists() and not args.force:
        raise BadInputError(f"--out {out}: exists; give another path or --force")
    raw, inferred = model_raw(args)
    if Path(args.model).expanduser().exists():  # the file may be read from another folder
        raw["teacher"] = str(Path(args.model).expanduser().resolve())
    require_data(recipe_from_dict(dict(raw)))  # an image model names its data first (one line)
    how = f"read from config.json's {inferred['architecture']}" if inferred.get("inferred") else "given"
    header = (
        f"modelpress recipe for {args.model} (task {raw['task']}: {how}).\n"
        f"Written by modelpress init: every key at its value; press it with\n"
        f"  modelpress run {out.name}\n"
        "Keys commented out are unset or off; uncomment one to set it."
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(recipe_toml(raw, header=header), encoding="utf-8")
    except OSError as exc:
        raise BadInputError(f"--out {out}: cannot write ({exc.strerror})") from None
    load_recipe(out)  # what was written loads (a bug here must not reach the user's run)
    return out
