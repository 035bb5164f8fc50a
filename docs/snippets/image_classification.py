"""Class probabilities from a modelpress image-classification bundle whose processor resizes to a
height × width (ViT, DeiT without crop, Swin), with onnxruntime + Pillow + numpy only."""

import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

bundle, paths = sys.argv[1], sys.argv[2:]
meta = json.load(open(f"{bundle}/bundle.json"))
cfg = json.load(open(f"{bundle}/image_processor/preprocessor_config.json"))
size = (cfg["size"]["width"], cfg["size"]["height"])
mean, std = np.array(cfg["image_mean"], np.float32), np.array(cfg["image_std"], np.float32)
session = ort.InferenceSession(f"{bundle}/{meta['runtimes']['onnxruntime']}")
pixels = []
for path in paths:
    image = np.asarray(Image.open(path).convert("RGB").resize(size, resample=cfg["resample"]))
    pixels.append(((image * cfg["rescale_factor"]).astype(np.float32) - mean) / std)
logits = session.run(["logits"], {"pixel_values": np.stack(pixels).transpose(0, 3, 1, 2)})[0]
p = np.exp(logits - logits.max(-1, keepdims=True))
p /= p.sum(-1, keepdims=True)
print(json.dumps([dict(zip(meta["label_names"], row)) for row in p.tolist()]))
