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

import numpy as np
from modelpress.errors import BadInputError
import tempfile


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


def fed_inputs(graph: Any) -> list[Any]:
    """The inputs of ``graph`` a caller feeds: an input with an initializer of its name is optional, that
    initializer its default (ONNX Runtime lists it apart, as an overridable initializer: the fused
    decoder's ``logits_to_keep``)."""
    defaults = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in defaults]


def graph_input_shapes(path: str | Path) -> dict[str, list[int | None]]:
    """Each input of an ONNX model a caller feeds and its dims (None where dynamic), read without its weights."""
    graph = load_onnx(path, load_external_data=False).graph
    return {
        i.name: [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
        for i in fed_inputs(graph)
    }


#: protobuf refuses to serialize a message over 2 GiB: a model whose protobuf passes this many bytes
#: is written with its weights in external data and handed to ONNX Runtime through a file (tests
#: lower it to send a tiny model down that path)
EXTERNAL_DATA_BYTES = 1_800_000_000


def _external(tensor) -> bool:
    import onnx

    return tensor.data_location == onnx.TensorProto.EXTERNAL


#: a pressed model (``model.int8.onnx``, ``model.int4.onnx``) holding more weight bytes than this keeps them
#: in ``<name>.data``, as onnxruntime-genai's builder does: ONNX Runtime maps that file instead of parsing
#: the weights out of the protobuf message (0.5 B int4, 296 MB: session 1.17 → 0.60 s, +597 → +523 MB RSS)
MAPPED_WEIGHTS_BYTES = 128 * 2**20


def maps_weights(model) -> bool:
    """Whether a pressed ``model`` is saved with its weights in ``<name>.data``: past
    :data:`MAPPED_WEIGHTS_BYTES`, or past what one protobuf message holds (:func:`needs_external_data`)."""
    held = sum(t.ByteSize() for t in model.graph.initializer if not _external(t))
    return held > min(MAPPED_WEIGHTS_BYTES, EXTERNAL_DATA_BYTES)


def needs_external_data(model) -> bool:
    """Whether ``model`` (an in-memory ``ModelProto``) holds too many weight bytes for one protobuf
    message (tensors already in external data do not count)."""
    return sum(t.ByteSize() for t in model.graph.initializer if not _external(t)) > EXTERNAL_DATA_BYTES


def save_onnx(model, path: str | Path, *, external_data: bool | None = None) -> Path:
    """``onnx.save`` through :func:`atomic_path`. With ``external_data`` (by default: when the model
    passes :data:`EXTERNAL_DATA_BYTES`) the weights go to ``<name>.data`` beside it, written before
    the model is renamed into place, so a complete ``<name>`` always has its data. Writing external
    data moves the weights out of ``model`` (onnx does so): the caller must not use it afterwards,
    or must reload them (:func:`session_from_model` does)."""
    import onnx

    path = Path(path)
    if external_data is None:
        external_data = needs_external_data(model)
    data = path.with_name(path.name + ".data")
    with atomic_path(path) as tmp:
        if external_data:
            if data.exists() and not any(_external(t) for t in model.graph.initializer):
                data.unlink()  # onnx appends to an existing data file: only this model's tensors in it
            onnx.save(model, str(tmp), save_as_external_data=True, location=data.name, size_threshold=1024)
        else:
            onnx.save(model, str(tmp))  # tensors already in external data keep their references
    return path


def onnx_files(path: str | Path) -> list[Path]:
    """The files a saved model is made of: the model and, when it has one, its external data."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return [path, data] if data.exists() else [path]


def session_from_model(model, options, providers=("CPUExecutionProvider",), *, weights_dir: Path | None = None):
    """An ONNX Runtime session on an in-memory model of any size. Small models go in as bytes; a
    model past :data:`EXTERNAL_DATA_BYTES` is written with external data to a temporary folder
    (protobuf cannot serialize it in memory: ``EncodeError: Failed to serialize proto``), the
    session is made from that file, and the weights are read back into ``model`` so the caller's
    model is whole again. ``weights_dir``: ``model``'s weights are external data in that folder
    (``quantize.offload``): its graph is written there and the session reads them from disk."""
    import onnx
    import onnxruntime as ort

    if weights_dir is not None:
        path = Path(tempfile.mkstemp(suffix=".onnx", dir=weights_dir)[1])
        try:
            onnx.save(model, str(path))  # only the graph: the weights stay where they are
            return ort.InferenceSession(str(path), options, providers=list(providers))
        finally:
            path.unlink()
    if not needs_external_data(model):
        return ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))
    with tempfile.TemporaryDirectory(prefix="modelpress-session-") as work:
        path = Path(work) / "model.onnx"
        onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=1024)
        try:
            return ort.InferenceSession(str(path), options, providers=list(providers))
        finally:
            onnx.load_external_data_for_model(model, work)
            for tensor in model.graph.initializer:
                tensor.ClearField("data_location")  # as it was: unset, not DEFAULT


def external_tensor(data: Any, location: str, array: Any, name: str):
    """``array`` appended to the open binary file ``data`` (at a page-aligned offset: ONNX Runtime can
    map it), and the ``TensorProto`` that refers to it as external data at ``location`` (the file's
    name, relative to the model's folder). The array's own memory is written, not a copy."""
    import onnx

    array = np.ascontiguousarray(array)
    offset = -data.tell() % 4096 + data.tell()
    data.seek(offset)
    data.write(array.data)
    tensor = onnx.TensorProto(name=name, dims=array.shape, data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype))
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(array.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def copy_model(model):
    """A deep copy of an in-memory ``ModelProto`` of any size. protobuf copies a message by
    serializing it, which fails past 2 GiB; a large model's skeleton is copied with its big
    tensors' bytes held aside, and each tensor's bytes are then set on both."""
    import onnx

    if not needs_external_data(model):
        return onnx.ModelProto.FromString(model.SerializeToString())
    big = [t for t in model.graph.initializer if t.HasField("raw_data") and t.ByteSize() > 1 << 20]
    held = []
    for tensor in big:
        held.append(tensor.raw_data)
        tensor.ClearField("raw_data")
    try:
        copy = onnx.ModelProto.FromString(model.SerializeToString())
    finally:
        for tensor, raw in zip(big, held):
            tensor.raw_data = raw
    by_name = {t.name: t for t in copy.graph.initializer}
    for tensor, raw in zip(big, held):
        by_name[tensor.name].raw_data = raw
    return copy
