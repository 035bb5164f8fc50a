"""`python -m bench.conv_forms`: which ONNX Runtime graph form of static int8 Conv is fastest on
this CPU. A random ResNet-18-shaped classifier (BasicBlock, depths 2-2-2-2, 224×224, BatchNorm
folded by the export), calibrated on 64 random images; interleaved rounds, 2 threads:

  model           ORT fp32
  ours_ort        modelpress `ort` format (Conv in Q/DQ: input and per-channel weight)
  ours_qdq        modelpress `qdq` format
  ort_static      onnxruntime.quantization.quantize_static defaults (QDQ, per-tensor, output Q too)
  ort_static_qop  quantize_static QOperator, per-channel (QLinearConv)

Prints top-1 agreement with fp32 and the latency ratios; timings only (random weights). A
ConvInteger form (the Conv analogue of MatMulIntegerToFloat) measured 2.4× fp32's time at b32
here, against 1.18× for Q/DQ, and was dropped.
"""

from __future__ import annotations

import collections
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

FORMS = ("model", "ours_ort", "ours_qdq", "ort_static", "ort_static_qop")


def build(work: Path):
    """The fp32 model and every int8 form in ``work``; returns the encoder and the image paths."""
    import torch
    import transformers
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from modelpress.calibration_data.feeds import ExampleFeed
    from modelpress.export.onnx_export import export_onnx
    from modelpress.modalities import get_modality
    from modelpress.runtimes.cpu import int8_gemm_saturates
    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.static import plan_quantization, write_quantized
    from modelpress.tasks import configure_task
    from modelpress.testing import write_images

    cfg = transformers.ResNetConfig(
        embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic", num_labels=10
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForImageClassification.from_config(cfg).eval()
    model.save_pretrained(work / "m")
    transformers.ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875).save_pretrained(work / "m")
    task, image = configure_task("image-classification"), get_modality("image")
    processor = image.load_preprocessor(str(work / "m"))
    export_onnx(model, processor, work / "model.onnx", task=task)
    paths = write_images(work / "cal", 64, size=(256, 256))
    encoder = image.encoder(processor, input_names=("pixel_values",))
    feed = ExampleFeed(paths, encoder, batch_size=16)
    plan = plan_quantization(work / "model.onnx", feed, QuantizeConfig())
    write_quantized(plan, work / "ours_ort.onnx")
    write_quantized(replace(plan, cfg=plan.cfg.with_(format="qdq")), work / "ours_qdq.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feed)

        def get_next(self):
            return next(self.it, None)

    quantize_static(
        str(work / "model.onnx"),
        str(work / "ort_static.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=False,
        reduce_range=int8_gemm_saturates(),
    )
    quantize_static(
        str(work / "model.onnx"),
        str(work / "ort_static_qop.onnx"),
        Reader(),
        quant_format=QuantFormat.QOperator,
        per_channel=True,
        reduce_range=int8_gemm_saturates(),
    )
    return encoder, paths


def main() -> int:
    import onnxruntime as ort

    from modelpress.calibration_data.feeds import ExampleFeed

    with tempfile.TemporaryDirectory(prefix="mp-conv-") as tmp:
        work = Path(tmp)
        encoder, paths = build(work)
        sessions = {}
        for name in FORMS:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 2
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sessions[name] = ort.InferenceSession(str(work / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"])
        batch = next(iter(ExampleFeed(paths[:32], encoder, batch_size=32)))
        ref = sessions["model"].run(None, batch)[0]
        for name, s in sessions.items():
            out = s.run(None, batch)[0]
            print(
                f"{name:<16} top-1 agreement {float((out.argmax(1) == ref.argmax(1)).mean()):.3f}  "
                f"max |diff| / max |fp32| {float(np.abs(out - ref).max() / np.abs(ref).max()):.4f}"
            )
        for b, rounds in ((1, 12), (32, 5)):
            feed = {"pixel_values": batch["pixel_values"][:b]}
            times = collections.defaultdict(list)
            for r in range(2 + rounds):
                for name, s in sessions.items():
                    t0 = time.perf_counter()
                    s.run(None, feed)
                    if r >= 2:
                        times[name].append(time.perf_counter() - t0)
            med = {n: float(np.median(v)) * 1e3 for n, v in times.items()}
            print(f"b{b}: " + ", ".join(f"{n} {v:.1f} ms ({v / med['model']:.3f}× fp32)" for n, v in med.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
