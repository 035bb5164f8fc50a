"""The export stage of a run: the deployed model → ``model.onnx`` (parity-checked), the files
inference needs beside it (preprocessor, config), and the optional fused graph."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from modelpress.export.exporters import export_model
from modelpress.export.onnx_export import ExportResult
from modelpress.modalities import get_modality
from modelpress.export.fusion import fuse_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportOutcome:
    result: ExportResult
    fused: bool

    def report_section(self) -> dict[str, Any]:
        r = self.result
        return {
            "opset": r.opset,
            "seconds": r.seconds,
            "input_names": list(r.input_names),
            "parity_max_abs_diff": r.parity.max_abs_diff,
            "parity_batch_shape": list(r.parity.feed_shape),
            "fused": self.fused,
        }


def export_stage(model: Any, preprocessor: Any, *, task: Any, cfg: Any, paths: Any) -> ExportOutcome:
    """``cfg``: the recipe's ``[export]``; ``paths``: the run folder's :class:`RunPaths`."""
    log.info("exporting %s", paths.model_onnx)
    result = export_model(
        task, model, preprocessor, paths.model_onnx, opset=cfg.opset, atol=cfg.atol, pressed=paths.pressed_onnx.name
    )
    get_modality(task.modality).save_preprocessor(preprocessor, paths.preprocessor(get_modality(task.modality)))
    model.config.to_json_file(str(paths.config))
    if cfg.fuse:
        fuse_model(
            paths.model_onnx, paths.model_fused_onnx, exported=result, model_config=model.config, atol=cfg.fuse_atol
        )
    return ExportOutcome(result, cfg.fuse)
