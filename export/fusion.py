"""Optional ONNX Runtime transformer fusion (Attention, SkipLayerNorm, BiasGelu), parity-checked.

Off by default: on the 2-core CPU it did not speed anything up (../shared/PEERS.md), and the
int8 model is quantized from the unfused graph. Kept for users whose hardware gains from it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from modelpress.export.parity import ParityReport, check_parity

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


def fuse_model(onnx_path: str | Path, out_path: str | Path, *, model, tokenizer, head, input_names,
               atol: float = 1e-3) -> ParityReport:
    """Fuse an exported model and check it against the PyTorch model on the export's parity batch."""
    import torch

    from modelpress.export.onnx_export import PARITY_SEQ, PARITY_TEXTS, encode

    feed = encode(tokenizer, PARITY_TEXTS, PARITY_SEQ, tuple(input_names))
    with torch.no_grad():
        reference = {head.output_name: head.torch_output(model(**feed)).numpy()}
    cfg = model.config
    return fuse(onnx_path, out_path, model_type=cfg.model_type,
                num_heads=getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_heads", 0),
                hidden_size=getattr(cfg, "hidden_size", 0) or getattr(cfg, "dim", 0),
                parity_feed={k: v.numpy() for k, v in feed.items()}, reference=reference, atol=atol)
