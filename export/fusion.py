"""Optional ONNX Runtime transformer fusion (Attention, SkipLayerNorm, BiasGelu), parity-checked.

Off by default: on the 2-core CPU it did not speed anything up (../shared/PEERS.md), and the
int8 model is quantized from the unfused graph. Kept for users whose hardware gains from it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from export.parity import ParityReport, check_parity

#: transformers model_type → the fusion optimizer's model type (encoder families it handles)
FUSION_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert",
                      "electra": "bert", "mpnet": "bert"}


def fuse(onnx_path: str | Path, out_path: str | Path, *, model_type: str, num_heads: int, hidden_size: int,
         parity_feed: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
         atol: float) -> ParityReport:
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(onnx_path), model_type=FUSION_MODEL_TYPES.get(model_type, "bert"),
                               num_heads=num_heads, hidden_size=hidden_size, opt_level=1, use_gpu=False)
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".partial")
    optimized.save_model_to_file(str(tmp))
    report = check_parity(str(tmp), parity_feed, reference, atol=atol, label="fusion")
    os.replace(tmp, out_path)
    return report
