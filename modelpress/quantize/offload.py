"""The fp32 weights on disk while quantization works on a large model: a 0.5 B decoder's weights are
2 GB, and the calibration session, the statistics and the in-memory model each holding them would
pass the press's memory bound (issue #24: peak RSS ≤ 2.5× the fp32 weights). Data-aware int4
(``weight_only`` → ``int4_data``) and static int8 (``static.plan_quantization``: calibration,
SmoothQuant, the Q/DQ writers through ``graph.GraphEditor``) both work on an offloaded model.

:meth:`DiskWeights.offload` writes the model's initializers to one external-data file in a work folder and
returns a new in-memory model that holds only their references: a calibration session (made from
that folder, :func:`modelpress.fileio.session_from_model`) is then the only holder of the weights
while it runs. :class:`DiskWeights` reads a weight back when its turn comes, writes new large
weights (SmoothQuant's rescaled ones) beside the others, and at the end :meth:`DiskWeights.reload`
brings back the initializers the written graph still reads.

A new message, not the old one with its bytes cleared: protobuf (upb) frees a message's bytes only
with the whole message (clearing ``raw_data`` keeps the memory, and setting it again allocates
anew), so the caller must drop its own reference to the model it passed in.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from modelpress.fileio import external_tensor

DATA_FILE = "weights.data"
WRITTEN_FILE = "written.data"  # the weights made since (SmoothQuant's rescaled ones, the int8 ones)
INLINE_BYTES = 1024  # smaller tensors stay in the graph, as onnx's own size threshold leaves them


class DiskWeights:
    """The weights of an offloaded model, in ``folder``; with ``owner`` (a ``TemporaryDirectory``) the
    folder lives as long as this object."""

    def __init__(self, folder: Path, owner: tempfile.TemporaryDirectory | None = None) -> None:
        self.folder = folder
        self._owner = owner

    @classmethod
    def beside(cls, path: Path, prefix: str) -> "DiskWeights":
        """A new work folder next to ``path`` (the same disk as the model, not a /tmp that may be
        RAM-backed); the system's temporary folder when ``path``'s folder cannot be written."""
        try:
            owner = tempfile.TemporaryDirectory(prefix=prefix, dir=path.parent)
        except OSError:  # a read-only model folder (a shared model store)
            owner = tempfile.TemporaryDirectory(prefix=prefix)
        return cls(Path(owner.name), owner)

    def offload(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """``model``'s skeleton, its initializers in the folder's :data:`DATA_FILE` (``model`` itself is
        left pointing there too, its bytes held until the caller drops it)."""
        path = self.folder / "offloaded.onnx"
        onnx.save(model, str(path), save_as_external_data=True, location=DATA_FILE, size_threshold=INLINE_BYTES)
        skeleton = onnx.load(str(path), load_external_data=False)
        path.unlink()
        return skeleton

    def array(self, tensor: onnx.TensorProto) -> np.ndarray:
        """The value of ``tensor``, read from the folder when it lives there."""
        return numpy_helper.to_array(tensor, base_dir=str(self.folder))

    def view(self, tensor: onnx.TensorProto) -> np.ndarray:
        """The value of ``tensor`` without reading it into memory: a read-only map of its bytes in the
        folder (for comparisons that touch each byte once), or its in-graph value."""
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            return numpy_helper.to_array(tensor)
        where = {entry.key: entry.value for entry in tensor.external_data}
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        offset = int(where.get("offset", 0))
        path = self.folder / where["location"]
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(tensor.dims))

    def tensor(self, array: np.ndarray, name: str) -> onnx.TensorProto:
        """``array`` as an initializer: in the folder when it is large, else in the graph."""
        if array.nbytes < INLINE_BYTES:
            return numpy_helper.from_array(array, name)
        path = self.folder / WRITTEN_FILE
        with open(path, "r+b" if path.exists() else "wb") as data:  # not "ab": its writes ignore seek()
            data.seek(0, os.SEEK_END)
            return external_tensor(data, WRITTEN_FILE, array, name)

    def reload(self, model: onnx.ModelProto) -> None:
        """Every initializer of ``model`` still in the folder back into memory."""
        onnx.load_external_data_for_model(model, str(self.folder))
        for tensor in model.graph.initializer:
            tensor.ClearField("data_location")  # as an in-memory tensor is: unset, not DEFAULT

    def close(self) -> None:
        if self._owner is not None:
            self._owner.cleanup()
