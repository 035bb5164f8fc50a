"""OpenVINO GenAI's part of a text-generation bundle: ``openvino_genai/``, the folder
``openvino_genai.LLMPipeline`` opens, written from the quantization plan (the pressing side; the
runner that measures it is ``runtimes.openvino_genai_runner``, on the deploy side).

The stateful IR: the plan's IR (``openvino_runner.write_openvino_ir``, the same as
``openvino/model.xml``) with a ``beam_idx`` input, its cache as variables and an empty initial
cache of the prompt's batch (:func:`make_stateful`). The tokenizer: the bundle's, converted by
openvino-tokenizers into ``openvino_tokenizer.xml`` / ``openvino_detokenizer.xml``, and
``generation_config.json`` (greedy; its special tokens).
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoTokenizer

from modelpress.errors import BackendUnavailableError
from modelpress.kv_cache import KVLayout
from modelpress.paths import OPENVINO_GENAI_XML
from modelpress.runtimes.artifacts import RuntimeArtifact
from modelpress.runtimes.openvino_genai_runner import BEAM_IDX
from modelpress.runtimes.openvino_runner import require_openvino, write_openvino_ir

GENAI_DIR = Path(OPENVINO_GENAI_XML).parent.name
MODEL_XML = Path(OPENVINO_GENAI_XML).name
TOKENIZER_XML, DETOKENIZER_XML = "openvino_tokenizer.xml", "openvino_detokenizer.xml"
#: where a text bundle keeps its tokenizer (the text modalities' ``preprocessor_dir``)
TOKENIZER_DIR = "tokenizer"


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise BackendUnavailableError(
            f"the openvino-genai runtime needs the {module.replace('_', '-')} package: "
            "pip install 'modelpress[openvino-genai]'"
        ) from None


class OpenVINOGenAIArtifact(RuntimeArtifact):
    """OpenVINO GenAI ships ``openvino_genai/``: the plan's IR made stateful, and the tokenizer as IR."""

    runtime = "openvino-genai"

    def require(self, recipe: Any) -> None:
        require_openvino()
        _require("openvino_tokenizers")

    def write(self, quant: Any, paths: Any, *, recipe: Any, task: Any) -> dict[str, Any]:
        folder = paths.root / GENAI_DIR
        with tempfile.TemporaryDirectory(prefix=".openvino-genai-", dir=paths.root) as work:
            xml = write_openvino_ir(quant, paths.pressed_onnx, Path(work) / "ir" / "model.xml")
            write_genai_folder(xml, folder, paths.root / TOKENIZER_DIR)
        return {}


def make_stateful(model: Any, layout: KVLayout) -> Any:
    """``model`` (an ``ov.Model`` of ``export.causal_lm``'s layout) with its cache as state, in place."""
    ov = require_openvino()
    from openvino import opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    ids = model.input("input_ids")
    beam = ops.parameter(ov.PartialShape([ids.get_partial_shape()[0]]), ov.Type.i32, name=BEAM_IDX)
    beam.output(0).get_tensor().set_names({BEAM_IDX})
    model.add_parameters([beam])
    for name in layout.past_names():
        port = model.input(name)
        consumers = port.get_target_inputs()
        picked = ops.gather(port, beam, ops.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(picked.output(0))
    model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(model, dict(zip(layout.past_names(), layout.present_names())))
    # each state starts as an empty cache of the prompt's batch (its other dimensions are fixed)
    batch = ops.gather(ops.shape_of(ids, output_type="i64"), ops.constant([0]), ops.constant(0))
    for op in model.get_ops():
        if op.get_type_name() == "ReadValue":
            dims = [d.get_min_length() for d in op.get_output_partial_shape(0)]
            shape = [batch, *(ops.constant(np.array([d], np.int64)) for d in dims[1:])]
            zero = ops.constant(0.0, dtype=op.get_output_element_type(0))
            op.set_arguments([ops.broadcast(zero, ops.concat(shape, 0))])
    model.validate_nodes_and_infer_types()
    return model


def write_genai_folder(xml: str | Path, folder: str | Path, tokenizer_dir: str | Path) -> Path:
    """The stateless IR ``xml`` (our KV-cache layout) and the tokenizer in ``tokenizer_dir`` as a
    folder ``LLMPipeline`` opens; written under a temporary name and renamed."""
    ov = require_openvino()
    folder = Path(folder)
    model = ov.Core().read_model(str(xml))
    shapes = {
        p.get_any_name(): [d.get_length() if d.is_static else -1 for d in p.get_partial_shape()] for p in model.inputs
    }
    make_stateful(model, KVLayout.from_shapes(shapes))
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=False)
    ov.save_model(model, str(tmp / MODEL_XML), compress_to_fp16=False)
    _write_tokenizers(tokenizer_dir, tmp)
    os.replace(tmp, folder)
    return folder


def _write_tokenizers(tokenizer_dir: str | Path, folder: Path) -> None:
    """openvino-tokenizers' tokenizer and detokenizer of the bundle's tokenizer, and the generation
    config LLMPipeline reads its end-of-sequence token from."""
    ov = require_openvino()
    convert_tokenizer = _require("openvino_tokenizers").convert_tokenizer
    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tokenizer, detokenizer = convert_tokenizer(hf, with_detokenizer=True)
    ov.save_model(tokenizer, str(folder / TOKENIZER_XML))
    ov.save_model(detokenizer, str(folder / DETOKENIZER_XML))
    config = {"do_sample": False, "num_beams": 1}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(getattr(hf, key, None), int):
            config[key] = getattr(hf, key)
    (folder / "generation_config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
