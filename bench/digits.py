"""`python -m bench.digits --out DIR`: real image data and small real image classifiers, offline.

No pretrained vision model is reachable here, so this trains small ones on real data in minutes:
scikit-learn's bundled handwritten digits (1,797 8×8 scans, upscaled to 32×32 RGB PNG files,
split 1,197 train / 600 test by a seeded shuffle; a ``calib/`` folder links 256 training images)
— a ViT (patch 4, 4 layers, width 64) and a ResNet (BasicBlock, 3 stages), each saved as an
ordinary transformers folder with its image processor. ``make demo`` presses the ResNet
(``configs/resnet-digits.toml``), ``bench.vision_bench`` both, and the integration tests a short
training of the same ResNet. A folder already written is reused (``DONE`` marks a finished one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

SIZE = 32
DONE = "digits.json"


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


def new_model(kind: str):
    """An untrained ``vit`` or ``resnet`` digit classifier (10 classes) and its image processor."""
    import transformers

    labels = {str(i): i for i in range(10)}
    common = dict(num_labels=10, label2id=labels, id2label={i: n for n, i in labels.items()})
    if kind == "vit":
        cfg = transformers.ViTConfig(
            image_size=SIZE,
            patch_size=4,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
            **common,
        )
        processor = transformers.ViTImageProcessorPil(size={"height": SIZE, "width": SIZE})
    else:
        cfg = transformers.ResNetConfig(
            embedding_size=32,
            hidden_sizes=[32, 64, 128],
            depths=[1, 1, 1],
            layer_type="basic",
            downsample_in_first_stage=False,
            **common,
        )
        processor = transformers.ConvNextImageProcessorPil(size={"shortest_edge": SIZE}, crop_pct=1.0)
    return transformers.AutoModelForImageClassification.from_config(cfg), processor


def train(kind: str, train_dir: Path, out: Path, *, epochs: int, seed: int = 0) -> dict:
    """Train a small classifier on the training imagefolder (random ±2 px shifts); save it at ``out``."""
    import torch

    from modelpress.modalities.image import ImageEncoder
    from modelpress.tasks.images import load_image_eval

    torch.manual_seed(seed)
    model, processor = new_model(kind)
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
            xb = xb[:, :, dy : dy + SIZE, dx : dx + SIZE]
            loss = torch.nn.functional.cross_entropy(model(pixel_values=xb).logits, y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return {
        "epochs": epochs,
        "train_images": len(x),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def prepare(out: Path, models: list[str], *, epochs: int) -> dict:
    """``out/{train,test,calib}`` and a trained ``out/<kind>`` per model; reused when ``DONE`` says so."""
    out = Path(out)
    wanted = {"models": sorted(models), "epochs": epochs}
    done = out / DONE
    if done.is_file():
        info = json.loads(done.read_text(encoding="utf-8"))
        if {k: info.get(k) for k in wanted} == wanted:
            print(f"digits: reusing {out}", file=sys.stderr)
            return info
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    write_digits(out)
    info = dict(wanted, training={})
    for kind in models:
        print(f"digits: training the {kind} on {out / 'train'} ({epochs} epochs) ...", file=sys.stderr)
        info["training"][kind] = train(kind, out / "train", out / kind, epochs=epochs)
    done.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="artifacts/digits")
    ap.add_argument("--models", nargs="+", default=["resnet"], choices=["vit", "resnet"])
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args(argv)
    print(json.dumps(prepare(Path(args.out), args.models, epochs=args.epochs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
