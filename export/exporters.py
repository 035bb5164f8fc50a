"""Which exporter turns a task's model into ONNX: the export stage's registry, keyed by the task's ``exporter``.

A task names its exporter (``Task.exporter``: ``"onnx"``, the task's output traced through its modality's inputs;
``"causal-lm"``, a decoder with its KV cache and onnxruntime-genai's config; ``"causal-lm-fused"``, the same
written with ONNX Runtime's fused operators); the export stage and ``modelpress
export`` call :func:`export_model`, so the tasks (below the stages) never import an exporter. A task with a new
kind of graph adds its exporter here, one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from modelpress.export.genai_config import export_for_genai, export_fused_for_genai
from modelpress.export.onnx_export import export_onnx
from modelpress.paths import MODEL_INT8_ONNX
from modelpress.registry import Registry

EXPORTERS: Registry[Callable[..., Any]] = Registry("exporter")
EXPORTERS.register("onnx", export_onnx)
EXPORTERS.register("causal-lm", export_for_genai)
EXPORTERS.register("causal-lm-fused", export_fused_for_genai)
#: the exporters whose config names the pressed model (``genai_config.json`` → ``filename``)
NAMES_THE_PRESSED_MODEL = (export_for_genai, export_fused_for_genai)


def export_model(
    task: Any,
    model: Any,
    preprocessor: Any,
    out_path: str | Path,
    *,
    opset: int,
    atol: float,
    pressed: str = MODEL_INT8_ONNX,
) -> Any:
    """``model`` → ONNX at ``out_path`` through ``task``'s exporter, parity-checked (``onnx_export.ExportResult``).
    ``pressed``: the file the quantize stage writes beside it (``paths.PRESSED_FILES``), for an exporter
    that writes a config naming the deployed model (onnxruntime-genai's). An option a run decides with the model
    (an ``"auto"``) and not decided yet (``modelpress export`` without a recipe) is decided here with the model
    alone, no runtime limiting it (``Task.for_model``)."""
    task = task.for_model(getattr(model, "config", None), {})
    export = EXPORTERS.get(task.exporter)
    if export in NAMES_THE_PRESSED_MODEL:
        return export(model, preprocessor, out_path, task=task, opset=opset, atol=atol, pressed=pressed)
    return export(model, preprocessor, out_path, task=task, opset=opset, atol=atol)
