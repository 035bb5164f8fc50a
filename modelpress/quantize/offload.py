"""The fp32 weights on disk while the data-aware int4 methods work (``int4_data``, called from
``weight_only``): a 0.5 B decoder's weights are 2 GB, and the calibration session, the statistics
and the in-memory model each holding them would pass the press's memory bound (issue #24: peak
RSS ≤ 2.5× the fp32 weights).

:func:`offload` writes the model's initializers to one external-data file in a work folder and
returns a new in-memory model that holds only their references: the calibration session (made
from that folder, :func:`modelpress.fileio.session_from_model`) is then the only holder of the
weights while it runs, and each MatMul's weight is read back (:func:`array`) when its turn comes.
:func:`reload` brings back, at the end, the initializers the pressed graph still reads.

A new message, not the old one with its bytes cleared: protobuf (upb) frees a message's bytes
only with the whole message (clearing ``raw_data`` keeps the memory), so the caller must drop its
own reference to the model it passed in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

DATA_FILE = "weights.data"


def offload(model: onnx.ModelProto, folder: Path) -> onnx.ModelProto:
    """``model``'s skeleton, its initializers in ``folder``/:data:`DATA_FILE` (``model`` itself is left
    pointing there too, its bytes held until the caller drops it)."""
    path = folder / "offloaded.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location=DATA_FILE, size_threshold=1024)
    skeleton = onnx.load(str(path), load_external_data=False)
    path.unlink()
    return skeleton


def array(tensor: onnx.TensorProto, folder: Path | None) -> np.ndarray:
    """The value of ``tensor``, read from ``folder`` when it lives there (None: in memory)."""
    return numpy_helper.to_array(tensor, base_dir=str(folder) if folder is not None else "")


def reload(model: onnx.ModelProto, folder: Path) -> None:
    """Every initializer of ``model`` still on disk back into memory (before ``folder`` goes)."""
    onnx.load_external_data_for_model(model, str(folder))
    for tensor in model.graph.initializer:
        tensor.ClearField("data_location")  # as an in-memory tensor is: unset, not DEFAULT
