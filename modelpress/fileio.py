"""Atomic file writes: a file is either its previous complete version or its new complete one.

Every artifact is written to a temporary sibling and renamed onto its name (``os.replace`` is
atomic on one file system), so a kill, a full disk or an exception mid-write never leaves a
half-written model, report or checkpoint that looks complete. JSON is strict: NaN and infinity
are refused at write time instead of producing a file other tools cannot parse.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator
from modelpress.errors import BadInputError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write (a file or a folder); it is renamed onto
    ``path`` when the block succeeds and removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_bytes(path: str | Path, data: bytes | memoryview) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """Strict JSON (NaN / infinity raise ValueError); ``default=str`` for paths and the like."""
    return json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False, default=str) + "\n"


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    return write_text(path, dumps_json(obj, indent=indent, sort_keys=sort_keys))


def load_onnx(path: str | Path, *, load_external_data: bool = True):
    """``onnx.load``; a missing file or one that is not an ONNX model is a BadInputError."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: ONNX model not found")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise BadInputError(
            f"{path}: not an ONNX model ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    if not model.graph.node:
        raise BadInputError(f"{path}: not an ONNX model (no graph)")
    return model


def graph_input_shapes(path: str | Path) -> dict[str, list[int | None]]:
    """Each input of an ONNX model and its dims (None where dynamic), read without its weights."""
    graph = load_onnx(path, load_external_data=False).graph
    return {
        i.name: [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
        for i in graph.input
    }


def save_onnx(model, path: str | Path, *, external_data: bool = False) -> Path:
    """``onnx.save`` through :func:`atomic_path`. With ``external_data`` (models over protobuf's
    2 GB limit) the weights go to ``<name>.data`` beside it, written before the model is renamed
    into place, so a complete ``<name>`` always has its data."""
    import onnx

    path = Path(path)
    with atomic_path(path) as tmp:
        if external_data:
            data = path.with_name(path.name + ".data")
            if data.exists():
                data.unlink()  # onnx appends to an existing data file
            onnx.save(model, str(tmp), save_as_external_data=True, location=data.name)
        else:
            onnx.save(model, str(tmp))
    return path
