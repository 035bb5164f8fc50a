"""``modelpress triton BUNDLE REPO``: a published bundle as a Triton Inference Server model repository.

Writes ``REPO/<name>/config.pbtxt`` and ``REPO/<name>/1/model.*`` for one of the bundle's models:
the pressed ONNX model bundle.json lists (``model.int8.onnx``, ``model.int4.onnx``, ...) on the ONNX Runtime
backend (``platform: "onnxruntime_onnx"``), the OpenVINO IR
on the OpenVINO backend (``backend: "openvino"``), or a TensorRT engine (``platform:
"tensorrt_plan"``), as the bundle holds them. Inputs and outputs (names, dtypes, dims) are read from
the graph the server will load (the ONNX file, the IR through OpenVINO, an engine's Q/DQ ONNX twin);
when every input and output has a dynamic first dimension, it is the batch: ``max_batch_size`` is the
largest of the recipe's ``validate.batch_sizes`` and dynamic batching is on. Tokenization and the
task's post-processing (pooling, per-word selection) stay with the client; the server runs the graph.

Nothing here needs torch, transformers or tritonclient; OpenVINO is imported only for an IR.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from modelpress.errors import BadInputError
from modelpress.cli_model import model_name
from modelpress.fileio import fed_inputs, load_onnx
from modelpress.manifest import require_intact, require_not_failed
from modelpress.paths import BUNDLE_JSON, INT8_PLAN, MODEL_INT8_ONNX, MODEL_INT8_TRT_ONNX, refuse_inside_bundle

#: ONNX TensorProto element types → Triton data types
ONNX_TYPES = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}
#: OpenVINO element type names → Triton data types
OPENVINO_TYPES = {
    "f32": "TYPE_FP32",
    "f16": "TYPE_FP16",
    "bf16": "TYPE_BF16",
    "f64": "TYPE_FP64",
    "i64": "TYPE_INT64",
    "i32": "TYPE_INT32",
    "i16": "TYPE_INT16",
    "i8": "TYPE_INT8",
    "u8": "TYPE_UINT8",
    "boolean": "TYPE_BOOL",
}


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # Triton's TYPE_*
    dims: tuple[int, ...]  # -1: dynamic


@dataclass(frozen=True)
class Backend:
    """How Triton runs one kind of bundle model: the config line naming it and the files of ``1/``."""

    runtime: str
    config_line: str
    kind: str  # instance_group kind
    files: tuple[tuple[str, str], ...]  # (bundle file, name in the version folder)
    graph: str  # the file inputs and outputs are read from (bundle-relative)


#: the bundle's models Triton can serve, in the order ``--runtime`` defaults through
BACKENDS = {
    "onnxruntime": Backend(
        "onnxruntime",
        'platform: "onnxruntime_onnx"',
        "KIND_CPU",
        ((MODEL_INT8_ONNX, "model.onnx"),),
        MODEL_INT8_ONNX,
    ),
    "openvino": Backend(
        "openvino",
        'backend: "openvino"',
        "KIND_CPU",
        (("openvino/model.xml", "model.xml"), ("openvino/model.bin", "model.bin")),
        "openvino/model.xml",
    ),
    "tensorrt": Backend(
        "tensorrt", 'platform: "tensorrt_plan"', "KIND_GPU", ((INT8_PLAN, INT8_PLAN),), MODEL_INT8_TRT_ONNX
    ),
}


def backend_for(bundle: Path, runtime: str) -> Backend:
    """``BACKENDS[runtime]`` with the ONNX model the bundle's ``bundle.json`` lists for that runtime
    (``model.int4.onnx`` for weight-only int4; the model is always ``1/model.onnx`` in Triton)."""
    backend = BACKENDS[runtime]
    listed = (_bundle_runtimes(bundle)).get(runtime)
    if not isinstance(listed, str) or not listed.endswith(".onnx") or listed == backend.graph:
        return backend
    return replace(backend, files=((listed, "model.onnx"),), graph=listed)


def _bundle_runtimes(bundle: Path) -> dict[str, Any]:
    try:
        meta = json.loads((Path(bundle) / BUNDLE_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    runtimes = meta.get("runtimes") if isinstance(meta, dict) else None
    return runtimes if isinstance(runtimes, dict) else {}


def onnx_io(path: Path) -> tuple[list[Tensor], list[Tensor]]:
    """Inputs and outputs of an ONNX graph (initializers listed as inputs are not inputs)."""
    graph = load_onnx(path, load_external_data=False).graph

    def tensor(v: Any) -> Tensor:
        t = v.type.tensor_type
        if t.elem_type not in ONNX_TYPES:
            raise BadInputError(f"{path}: {v.name} has an element type Triton has no name for ({t.elem_type})")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        return Tensor(v.name, ONNX_TYPES[t.elem_type], dims)

    return [tensor(v) for v in fed_inputs(graph)], [tensor(v) for v in graph.output]


def openvino_io(path: Path) -> tuple[list[Tensor], list[Tensor]]:
    """Inputs and outputs of an OpenVINO IR, as the OpenVINO backend names them."""
    try:
        import openvino as ov
    except ImportError:
        raise BadInputError(f"{path}: reading an OpenVINO IR needs openvino (pip install 'modelpress[openvino]')")
    model = ov.Core().read_model(str(path))

    def tensor(port: Any) -> Tensor:
        kind = port.get_element_type().get_type_name()
        if kind not in OPENVINO_TYPES:
            raise BadInputError(f"{path}: {port.get_any_name()} has an element type Triton has no name for ({kind})")
        dims = tuple(-1 if d.is_dynamic else d.get_length() for d in port.get_partial_shape())
        return Tensor(port.get_any_name(), OPENVINO_TYPES[kind], dims)

    return [tensor(p) for p in model.inputs], [tensor(p) for p in model.outputs]


def graph_io(bundle: Path, backend: Backend) -> tuple[list[Tensor], list[Tensor]]:
    path = bundle / backend.graph
    return openvino_io(path) if path.suffix == ".xml" else onnx_io(path)


def available(bundle: Path) -> list[str]:
    """The runtimes of ``BACKENDS`` whose files the bundle holds."""
    return [name for name in BACKENDS if all((bundle / src).is_file() for src, _ in backend_for(bundle, name).files)]


def batching(inputs: Sequence[Tensor], outputs: Sequence[Tensor]) -> bool:
    """Whether the first dimension of every input and output is dynamic (a batch Triton may fill)."""
    return all(t.dims and t.dims[0] == -1 for t in (*inputs, *outputs))


def _tensors(key: str, tensors: Sequence[Tensor], *, batched: bool) -> list[str]:
    lines = [f"{key} ["]
    for k, t in enumerate(tensors):
        dims = t.dims[1:] if batched else t.dims
        dims_text = ", ".join(str(d) for d in dims) if dims else "1"  # a scalar per example: dims [1]
        comma = "," if k < len(tensors) - 1 else ""
        lines.append(f'  {{ name: "{t.name}" data_type: {t.data_type} dims: [ {dims_text} ] }}{comma}')
    return [*lines, "]"]


def config_text(
    name: str, backend: Backend, inputs: Sequence[Tensor], outputs: Sequence[Tensor], *, max_batch_size: int
) -> str:
    """``config.pbtxt`` (protobuf text format of Triton's ``ModelConfig``)."""
    batched = batching(inputs, outputs) and max_batch_size > 0
    lines = [
        f'name: "{name}"',
        backend.config_line,
        f"max_batch_size: {max_batch_size if batched else 0}",
        *_tensors("input", inputs, batched=batched),
        *_tensors("output", outputs, batched=batched),
    ]
    if batched:
        lines.append("dynamic_batching { }")
    lines.append(f"instance_group [ {{ kind: {backend.kind} count: 1 }} ]")
    return "\n".join(lines) + "\n"


def _max_batch_size(manifest: dict[str, Any]) -> int:
    sizes = ((manifest.get("recipe") or {}).get("validate") or {}).get("batch_sizes") or [1]
    return max(int(s) for s in sizes)


def _external_data(bundle: Path, backend: Backend) -> list[tuple[str, str]]:
    """The files an ONNX model keeps its tensors in (a large model's), under the names it refers to."""
    if not backend.graph.endswith(".onnx") or backend.runtime == "tensorrt":
        return []

    graph = load_onnx(bundle / backend.graph, load_external_data=False).graph
    locations = {
        entry.value
        for t in graph.initializer
        if t.data_location == 1  # TensorProto.EXTERNAL
        for entry in t.external_data
        if entry.key == "location"
    }
    parent = Path(backend.graph).parent
    return [(str(parent / loc), loc) for loc in sorted(locations)]


def write_repository(
    bundle: str | Path, repo: str | Path, *, runtime: str | None = None, name: str | None = None, force: bool = False
) -> Path:
    """``repo/<name>/`` (config.pbtxt, ``1/model.*``) for one model of the published ``bundle``."""
    bundle, repo = Path(bundle), Path(repo)
    manifest = require_intact(bundle)
    require_not_failed(bundle, manifest)
    refuse_inside_bundle(repo)
    held = available(bundle)
    if not held:
        raise BadInputError(f"{bundle}: holds no model Triton can serve ({', '.join(BACKENDS)})")
    runtime = runtime or held[0]
    if runtime not in held:
        raise BadInputError(f"--runtime {runtime}: {bundle} holds {', '.join(held)}")
    backend = backend_for(bundle, runtime)
    name = name or model_name(str(bundle.resolve()))
    folder = repo / name
    if folder.exists() and not force:
        raise BadInputError(f"{folder}: exists; give another --name, or --force to replace it")
    inputs, outputs = graph_io(bundle, backend)
    text = config_text(name, backend, inputs, outputs, max_batch_size=_max_batch_size(manifest))
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "1").mkdir(parents=True)
    for src, dst in [*backend.files, *_external_data(bundle, backend)]:
        shutil.copyfile(bundle / src, folder / "1" / dst)
    (folder / "config.pbtxt").write_text(text, encoding="utf-8")
    return folder
