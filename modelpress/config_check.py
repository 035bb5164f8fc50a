"""The one checker of recipe values: every section (and the top level) is a frozen dataclass, and
this module turns a parsed TOML table into it, or raises one :class:`BadInputError` naming the key.

Types come from the dataclass annotations (TOML gives bool, int, float, str, arrays, tables):
``bool`` takes only true/false (``"false"`` is an error, never True), ``int`` refuses floats and
bools, ``float`` takes ints and refuses NaN/infinity, ``tuple[T, ...]`` takes arrays of T,
``Path`` (and a ``str`` field with ``metadata={"path": True}``) takes a string and applies the one
rule for relative paths (:class:`PathRule`), nested
dataclasses are sub-tables, ``X | None`` accepts X. Per-field ``metadata`` adds ``choices``,
``min``/``max`` (inclusive) and ``gt`` (exclusive), and ``expected`` (what a type error says the key
takes, "a class name or index"); cross-field rules stay in ``__post_init__``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from modelpress.errors import BadInputError
from modelpress.calibration_data import shipped_path

_MISSING = object()


@dataclass(frozen=True)
class PathRule:
    """The one rule for relative paths in a recipe: a path that exists in the working directory,
    the recipe's folder, or that folder's parent (in this order) is that file; a
    ``calibration_data/<file>`` the project ships is found wherever it is installed; anything else
    (an output, a hub id, a missing input) stays as written, relative to the working directory."""

    base_dirs: tuple[Path, ...] = ()

    @classmethod
    def for_recipe(cls, recipe_file: Path | None) -> "PathRule":
        bases = [Path.cwd()]
        if recipe_file is not None:
            folder = Path(recipe_file).resolve().parent
            bases += [folder, folder.parent]
        return cls(tuple(bases))

    def resolve(self, value: str) -> str:

        if not value:  # "" means "none" (an optional file), never the working directory
            return value
        p = Path(value).expanduser()
        if p.is_absolute():
            return str(p)
        for base in self.base_dirs:
            if (base / p).exists():
                return str((base / p).resolve())
        shipped = shipped_path(value)
        return str(shipped) if shipped is not None else value


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _check(hint: Any, value: Any, key: str, rule: PathRule) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _check(option, value, key, rule)
            except BadInputError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else BadInputError(f"{key}: unexpected value {value!r}")
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise BadInputError(f"{key}: expected true or false, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadInputError(f"{key}: expected an integer, got {_kind(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadInputError(f"{key}: expected a number, got {_kind(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise BadInputError(f"{key}: expected a string, got {_kind(value)}")
        return value
    if hint is Path:
        if not isinstance(value, (str, Path)) or not str(value):
            raise BadInputError(f"{key}: expected a path, got {_kind(value)}")
        return Path(rule.resolve(str(value)))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise BadInputError(f"{key}: expected a list, got {_kind(value)}")
        (item, *_rest) = typing.get_args(hint) or (Any,)
        return tuple(_check(item, v, key, rule) for v in value)
    if origin in (collections.abc.Mapping, dict) or hint in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise BadInputError(f"{key}: expected a table, got {_kind(value)}")
        return MappingProxyType(dict(value))
    if dataclasses.is_dataclass(hint):
        return check_section(hint, key, value, rule=rule)  # type: ignore[arg-type]  # a dataclass *type*
    raise TypeError(f"{key}: no check for the annotation {hint!r}")  # a bug in the dataclass


def _bounds(f: dataclasses.Field, value: Any, key: str) -> None:
    meta = f.metadata
    if value is None:
        return
    items = value if isinstance(value, tuple) else (value,)
    for v in items if "choices" in meta else ():  # a list's choices apply to each of its items
        if v not in meta["choices"]:
            raise BadInputError(f"{key}: expected one of {', '.join(map(str, meta['choices']))}, got {v!r}")
    for v in items:
        if "min" in meta and v < meta["min"]:
            raise BadInputError(f"{key}: expected >= {meta['min']}, got {v!r}")
        if "max" in meta and v > meta["max"]:
            raise BadInputError(f"{key}: expected <= {meta['max']}, got {v!r}")
        if "gt" in meta and not v > meta["gt"]:
            raise BadInputError(f"{key}: expected > {meta['gt']}, got {v!r}")
    if meta.get("nonempty") and not value:
        raise BadInputError(f"{key}: expected at least one value")


def check_fields(obj: Any, section: str) -> None:
    """The ``choices`` / ``min`` / ``max`` / ``gt`` / ``nonempty`` rules of a config dataclass's
    fields; called from each config's ``__post_init__``, so a config built in code is held to the
    same ranges as one read from a recipe."""
    prefix = f"{section}." if section else ""
    for f in dataclasses.fields(obj):
        if f.metadata:
            _bounds(f, getattr(obj, f.name), prefix + f.name)


def checked_fields(
    cls: type, section: str, raw: Any, *, rule: PathRule = PathRule(), skip: Sequence[str] = ()
) -> dict[str, Any]:
    """The checked values of the keys ``raw`` gives (unknown keys are an error)."""
    if not isinstance(raw, Mapping):
        raise BadInputError(f"{section}: expected a table ([{section}])")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in skip}
    prefix = f"{section}." if section else ""
    for key in raw:
        if key not in fields:
            raise BadInputError(f"{prefix}{key}: unknown key (known: {', '.join(sorted(fields)) or 'none'})")
    hints = typing.get_type_hints(cls)
    out = {}
    for name, value in raw.items():
        key = f"{prefix}{name}"
        expected = fields[name].metadata.get("expected")
        try:
            out[name] = _check(hints[name], value, key, rule)
        except BadInputError:
            if expected is None:
                raise
            raise BadInputError(f"{key}: expected {expected}, got {_kind(value)}") from None
        if fields[name].metadata.get("path") and isinstance(out[name], str):
            out[name] = rule.resolve(out[name])
    return out


def check_section(cls: type, section: str, raw: Any, *, rule: PathRule = PathRule(), **extra: Any):
    """``cls(**checked raw values, **extra)``; a rule ``__post_init__`` raises stays its message."""
    values = checked_fields(cls, section, raw, rule=rule)
    try:
        return cls(**values, **extra)
    except TypeError as exc:  # a required key missing
        raise BadInputError(f"{section or 'recipe'}: {exc}") from None


def written_in(raw: Mapping[str, Any], key: str) -> bool:
    """Whether the parsed recipe ``raw`` (the file, with its ``--set`` overrides) gives the dotted
    ``key`` ("validate.seq_lengths"): a value the user wrote, not a default."""
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def field_default(cls: type, name: str) -> Any:
    """A field's default (what the CLI offers when a flag is not given)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    raise KeyError(name)
