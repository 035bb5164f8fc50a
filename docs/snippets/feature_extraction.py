"""Sentence embeddings from a modelpress feature-extraction bundle, with onnxruntime + tokenizers only."""

import json
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

bundle, texts = sys.argv[1], sys.argv[2:] or ["the cat sat on the mat", "a dog runs fast"]
meta = json.load(open(f"{bundle}/bundle.json"))
pad = json.load(open(f"{bundle}/tokenizer/tokenizer_config.json"))["pad_token"]
tok = Tokenizer.from_file(f"{bundle}/tokenizer/tokenizer.json")
tok.enable_truncation(meta["max_length"])
tok.enable_padding(pad_id=tok.token_to_id(pad), pad_token=pad)
session = ort.InferenceSession(f"{bundle}/{meta['runtimes']['onnxruntime']}")
enc = tok.encode_batch(texts)
feed = {"input_ids": [e.ids for e in enc], "attention_mask": [e.attention_mask for e in enc]}
feed["token_type_ids"] = [e.type_ids for e in enc]
feed = {i.name: np.array(feed[i.name], dtype=np.int64) for i in session.get_inputs()}
hidden = session.run(["last_hidden_state"], feed)[0]
mask = feed["attention_mask"][..., None]
if meta["task"]["pooling"] == "cls":
    emb = hidden[:, 0]
else:
    emb = (hidden * mask).sum(1) / mask.sum(1)
if meta["task"]["normalize"]:
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
print(json.dumps(emb.tolist()))
