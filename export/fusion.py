"""Optional ONNX Runtime transformer fusion (Attention, SkipLayerNorm, BiasGelu), parity-checked.

Off by default: on the 2-core CPU it did not speed anything up (../shared/PEERS.md), and the
int8 model is quantized from the unfused graph. Kept for users whose hardware gains from it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from modelpress.export.parity import ParityReport, check_parity
from modelpress.fileio import atomic_path

#: transformers model_type → the fusion optimizer's model type (encoder families it handles)
FUSION_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert",
                      "electra": "bert", "mpnet": "bert"}


def fuse(onnx_path: str | Path, out_path: str | Path, *, model_type: str, num_heads: int, hidden_size: int,
         parity_feed: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
         atol: float) -> ParityReport:
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(onnx_path), model_type=FUSION_MODEL_TYPES.get(model_type, "bert"),
                               num_heads=num_heads, hidden_size=hidden_size, opt_level=1, use_gpu=False)
    with atomic_path(out_path) as tmp:
        optimized.save_model_to_file(str(tmp))
        report = check_parity(str(tmp), parity_feed, reference, atol=atol, label="fusion")
    return report


def fuse_model(onnx_path: str | Path, out_path: str | Path, *, exported, model_config,
               atol: float = 1e-3) -> ParityReport:
    """Fuse an exported model; parity against PyTorch on the export's own parity batch."""
    cfg = model_config
    return fuse(onnx_path, out_path, model_type=cfg.model_type,
                num_heads=getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_heads", 0),
                hidden_size=getattr(cfg, "hidden_size", 0) or getattr(cfg, "dim", 0),
                parity_feed=exported.parity_feed, reference=exported.reference, atol=atol)
