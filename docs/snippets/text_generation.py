"""Greedy text from a modelpress text-generation bundle (one graph with a KV cache: prefill, then one
token per step), with onnxruntime + tokenizers only."""

import json
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

bundle, prompt = sys.argv[1], " ".join(sys.argv[2:]) or "the cat"
meta = json.load(open(f"{bundle}/bundle.json"))
tok = Tokenizer.from_file(f"{bundle}/tokenizer/tokenizer.json")
session = ort.InferenceSession(f"{bundle}/{meta['runtimes']['onnxruntime']}")
ids = tok.encode(prompt).ids
feed = {"input_ids": np.array([ids]), "position_ids": np.arange(len(ids))[None]}
for name, shape in meta["input_shapes"].items():  # an empty past: [1, kv_heads, 0, head_dim]
    if name.startswith("past_key_values."):
        feed[name] = np.zeros((1, shape[1], 0, shape[3]), dtype=np.float32)
new = []
for step in range(8):
    feed["attention_mask"] = np.ones((1, len(ids) + len(new)), dtype=np.int64)
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    new.append(int(out["logits"][0, -1].argmax()))
    feed.update({"past_key_values." + k[8:]: v for k, v in out.items() if k.startswith("present.")})
    feed["input_ids"], feed["position_ids"] = np.array([[new[-1]]]), np.array([[len(ids) + step]])
print(json.dumps(tok.decode(new)))
