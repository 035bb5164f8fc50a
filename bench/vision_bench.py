"""`python -m bench.vision_bench`: real image classifiers pressed by modelpress, beside their peers.

No pretrained vision model is reachable offline, so this trains two small ones on real data in
minutes: scikit-learn's bundled handwritten digits (1,797 8×8 scans, upscaled to 32×32 RGB PNG
files, split 1,197 train / 600 test by a seeded shuffle) — a ViT (patch 4, 4 layers, width 64) and
a ResNet (BasicBlock, 3 stages). Each is saved as an ordinary transformers folder with its image
processor and pressed with ``modelpress run`` (calibration: 256 training images; eval: the test
imagefolder; gate: accuracy, max drop 0.5 points); when the plain run misses the gate, the
accuracy-aware ``auto`` run is reported too. Then, interleaved round-robin at 2 threads on the same
test images: PyTorch fp32 eager, ORT fp32, ORT ``quantize_static`` with its defaults (the peer a
user tries first), ORT ``quantize_dynamic`` per-channel (MatMul models), and ours, at b1 and b32,
with accuracy and top-1 agreement with fp32 on the whole test split.
Writes ``bench/results/vision.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from bench import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SIZE = 32


def write_digits(root: Path, *, seed: int = 0, test: int = 600) -> tuple[Path, Path, Path]:
    """train/, test/ imagefolders and a calib/ folder (256 training images) of the digit scans."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))
    splits = {"test": order[:test], "train": order[test:]}
    for split, idx in splits.items():
        for k, i in enumerate(idx):
            pixels = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
            image = Image.fromarray(pixels, "L").resize((SIZE, SIZE), Image.BILINEAR).convert("RGB")
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{split}{k:04d}.png")
    calib = root / "calib"
    calib.mkdir()
    for p in sorted((root / "train").rglob("*.png"))[::4][:256]:
        os.link(p, calib / p.name)
    return root / "train", root / "test", calib


def _model(kind: str):
    import transformers

    labels = {str(i): i for i in range(10)}
    common = dict(num_labels=10, label2id=labels, id2label={i: n for n, i in labels.items()})
    if kind == "vit":
        cfg = transformers.ViTConfig(image_size=SIZE, patch_size=4, hidden_size=64, num_hidden_layers=4,
                                     num_attention_heads=4, intermediate_size=128, **common)
        processor = transformers.ViTImageProcessorPil(size={"height": SIZE, "width": SIZE})
    else:
        cfg = transformers.ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1],
                                        layer_type="basic", downsample_in_first_stage=False, **common)
        processor = transformers.ConvNextImageProcessorPil(size={"shortest_edge": SIZE}, crop_pct=1.0)
    return transformers.AutoModelForImageClassification.from_config(cfg), processor


def train(kind: str, train_dir: Path, out: Path, *, epochs: int, seed: int = 0) -> dict:
    """Train a small classifier on the training imagefolder (random ±2 px shifts); save it at ``out``."""
    import torch

    from modelpress.modalities.image import ImageEncoder
    from modelpress.validate.images import load_image_eval

    torch.manual_seed(seed)
    model, processor = _model(kind)
    es = load_image_eval(train_dir, label2id=model.config.label2id)
    x = torch.from_numpy(ImageEncoder(processor).encode(list(es.examples)).feed["pixel_values"])
    y = torch.tensor(es.labels)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3 if kind == "vit" else 3e-3, weight_decay=0.05)
    steps = epochs * -(-len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"], total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=gen).split(64):
            xb = torch.nn.functional.pad(x[batch], (2, 2, 2, 2), value=float(x.min()))
            dx, dy = (int(v) for v in torch.randint(0, 5, (2,), generator=gen))
            xb = xb[:, :, dy:dy + SIZE, dx:dx + SIZE]
            loss = torch.nn.functional.cross_entropy(model(pixel_values=xb).logits, y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return {"epochs": epochs, "train_images": len(x), "train_seconds": round(time.perf_counter() - t0, 1),
            "parameters": sum(p.numel() for p in model.parameters())}


def press(kind: str, teacher: Path, calib: Path, test: Path, work: Path, *, mode: str = "static") -> dict:
    from modelpress.pipeline import run_recipe
    from modelpress.recipe import load_recipe

    recipe = work / f"{kind}-{mode}.toml"
    recipe.write_text("\n".join([
        f'name = "{kind}-digits-{mode}"', f'teacher = "{teacher}"', 'task = "image-classification"',
        "[calibration]", f'data = "{calib}"', "num_samples = 256",
        "[quantize]", f'mode = "{mode}"',
        "[validate]", f'eval_data = "{test}"', "batch_sizes = [1, 32]", "latency_budget_s = 10",
        "threads = 2", "[gate]", "max_drop = 0.5"]) + "\n")
    outcome = run_recipe(load_recipe(recipe), work / "out")
    report = json.loads((outcome.bundle / "report.json").read_text())
    metrics = {name: row["metrics"] for name, row in report["models"].items()}
    return {"bundle": str(outcome.bundle), "gate": report["gate"], "metrics": metrics,
            "quantization": {"mode": report["quantization"]["mode"], "auto": report["quantization"]["auto"],
                             "int8_nodes": len(report["quantization"]["quantized_nodes"]),
                             "fp32_nodes": len(report["quantization"]["fp32_nodes"])}}


def peers(kind: str, teacher: Path, bundle: Path, calib: Path, test: Path, work: Path, threads: int) -> dict:
    """Interleaved b1 / b32 latency and test accuracy of every variant."""
    import onnx
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_dynamic, quantize_static

    from modelpress.bundle import load
    from modelpress.calibration_data.feeds import ExampleFeed
    from modelpress.calibration_data.images import load_images
    from modelpress.runtimes.cpu import int8_gemm_saturates
    from modelpress.tasks import configure_task
    from modelpress.validate.images import load_image_eval
    from modelpress.validate.stage import open_predictor

    task = configure_task("image-classification")
    with load(bundle) as b:
        encoder = b.encoder
    fp32 = bundle / "model.onnx"
    feed = ExampleFeed(load_images(calib), encoder, batch_size=32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feed)

        def get_next(self):
            return next(self.it, None)

    files = {"ort-fp32": fp32, "modelpress-int8": bundle / "model.int8.onnx"}
    quantize_static(str(fp32), str(work / f"{kind}.ort-static.onnx"), Reader(), reduce_range=int8_gemm_saturates())
    files["ort-static-int8-defaults"] = work / f"{kind}.ort-static.onnx"
    if any(n.op_type == "MatMul" for n in onnx.load(str(fp32)).graph.node):
        quantize_dynamic(fp32, work / f"{kind}.ort-dyn.onnx", per_channel=True, weight_type=QuantType.QInt8,
                         reduce_range=int8_gemm_saturates())
        files["ort-dyn-int8-pc"] = work / f"{kind}.ort-dyn.onnx"
    torch.set_num_threads(threads)
    import transformers

    from bench.run_bench import interleaved

    model = transformers.AutoModelForImageClassification.from_pretrained(str(teacher)).eval()
    preds = {"pytorch-fp32": open_predictor("torch", model, task=task, encoder=encoder, threads=threads,
                                            name="pytorch-fp32")}
    for name, path in files.items():
        preds[name] = open_predictor("onnxruntime", path, task=task, encoder=encoder, threads=threads, name=name)
    es = load_image_eval(test, label2id=model.config.label2id)
    images = list(es.examples)
    t1 = interleaved(preds, [encoder.encode(images[:1])], 40)
    t32 = interleaved(preds, [encoder.encode(images[:32])], 10)
    ref = preds["pytorch-fp32"].predict(images).argmax(1)
    gold = np.asarray(es.labels)
    rows = {}
    for name, p in preds.items():
        top = p.predict(images).argmax(1)
        rows[name] = {"b1_median_ms": round(1e3 * float(np.median(t1[name])), 3),
                      "b32_median_ms": round(1e3 * float(np.median(t32[name])), 2),
                      "accuracy": round(100 * float(np.mean(top == gold)), 2),
                      "top1_agreement_with_fp32": round(100 * float(np.mean(top == ref)), 2)}
    for name, row in rows.items():
        for key in ("b1_median_ms", "b32_median_ms"):
            row[f"{key.split('_')[0]}_vs_ort_fp32"] = round(row[key] / rows["ort-fp32"][key], 3)
    for p in preds.values():
        p.runner.close()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vit", "resnet"], choices=["vit", "resnet"])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "vision.json"))
    args = ap.parse_args(argv)
    result = {"data": "sklearn digits, 32x32 RGB, 1,197 train / 600 test", "models": {}}
    with tempfile.TemporaryDirectory(prefix="mp-vision-") as tmp:
        work = Path(tmp)
        train_dir, test, calib = write_digits(work / "digits")
        for kind in args.models:
            print(f"[{kind}] training ...", file=sys.stderr)
            row = {"training": train(kind, train_dir, work / kind, epochs=args.epochs)}
            print(f"[{kind}] pressing ...", file=sys.stderr)
            row["static"] = press(kind, work / kind, calib, test, work)
            if not row["static"]["gate"]["passed"]:
                row["auto"] = press(kind, work / kind, calib, test, work, mode="auto")
            print(f"[{kind}] timing ...", file=sys.stderr)
            row["peers"] = peers(kind, work / kind, Path(row["static"]["bundle"]), calib, test, work, args.threads)
            result["models"][kind] = row
            print(json.dumps({kind: {k: v for k, v in row.items() if k != "peers"}}, indent=1))
            for name, r in row["peers"].items():
                print(f"  {name:<26} b1 {r['b1_median_ms']:>8.2f} ms ({r['b1_vs_ort_fp32']:.3f}× ORT fp32)  "
                      f"b32 {r['b32_median_ms']:>9.1f} ms ({r['b32_vs_ort_fp32']:.3f}×)  acc {r['accuracy']:.2f}  "
                      f"agree {r['top1_agreement_with_fp32']:.2f}")
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
