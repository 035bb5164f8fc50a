"""fp32 ONNX -> fp16 ONNX, the source of the fp16 TensorRT engine.

Place in the pipeline: ``model.onnx`` -> ``model.fp16.onnx`` -> ``model.fp16.plan``. A strongly
typed TensorRT network runs every tensor in the type the ONNX gives it (TensorRT 11 drops the
FP16 builder flag), so "an fp16 engine" means converting the graph to fp16 first.

Converter: ``onnxruntime.transformers.float16`` (ships inside the ``onnxruntime`` package we
already depend on; it is the same code as onnxconverter-common's ``float16``), falling back to
``onnxconverter_common`` when present. Inputs/outputs stay in their original types
(``keep_io_types``) so the runner feeds the same int64 ids and reads fp32 outputs as for every
other candidate. LayerNormalization stays fp32: its variance can overflow fp16's 65504 on
outlier activations, which TensorRT's docs warn about for fp16 normalization.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import onnx

from modelpress.errors import BackendUnavailableError, BadInputError
from modelpress.fileio import save_onnx

# ops kept in fp32 on top of the converter's own default block list
FP32_OPS = ("LayerNormalization",)


def _converter() -> ModuleType:
    for name in ("onnxruntime.transformers.float16", "onnxconverter_common.float16"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise BackendUnavailableError(
        "no fp16 ONNX converter: neither onnxruntime.transformers.float16 nor onnxconverter-common "
        "is importable (`pip install onnxconverter-common`)"
    )


def convert_to_fp16(src: Path, dst: Path) -> Path:
    """Write an fp16 copy of ``src`` to ``dst`` (atomically) and return ``dst``."""
    if not src.is_file():
        raise BadInputError(f"{src}: no such ONNX file to convert to fp16 (run `modelpress export` first)")
    converter = _converter()
    model = onnx.load(str(src))
    op_block_list = list(converter.DEFAULT_OP_BLOCK_LIST) + list(FP32_OPS)
    fp16_model = converter.convert_float_to_float16(model, keep_io_types=True, op_block_list=op_block_list)
    # models over protobuf's 2 GB limit need external data; BERT-family students never come close
    save_onnx(fp16_model, dst)
    return dst
