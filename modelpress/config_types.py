"""Type checks for recipe values, from each dataclass field's default.

TOML gives ints, floats, bools, strings and arrays; a float where a count is expected (``2.5``
runs) must fail at load time naming the key, not deep inside a stage with a traceback.
"""
from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

from modelpress.errors import BadInputError


def _kind(value: Any) -> str:
    return type(value).__name__


def checked_values(cls, section: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with lists made tuples and ints widened to floats where the default is a float;
    raises BadInputError naming ``section.key`` when a value's type does not match its default."""
    out = dict(values)
    for f in fields(cls):
        if f.name not in out:
            continue
        default = f.default if f.default is not MISSING else None
        value = out[f.name]
        key = f"{section}.{f.name}"
        if default is None:
            continue  # optional / free-form: checked by the class itself
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise BadInputError(f"{key}: expected true or false, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise BadInputError(f"{key}: expected an integer, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BadInputError(f"{key}: expected a number, got {value!r}")
            out[f.name] = float(value)
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise BadInputError(f"{key}: expected a string, got {_kind(value)} {value!r}")
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise BadInputError(f"{key}: expected a list, got {value!r}")
            value = tuple(value)
            if default and all(isinstance(d, int) and not isinstance(d, bool) for d in default):
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                    raise BadInputError(f"{key}: expected a list of integers, got {list(value)!r}")
            if default and all(isinstance(d, str) for d in default) or f.name.startswith("nodes"):
                value = tuple(str(v) for v in value)
            out[f.name] = value
    return out
