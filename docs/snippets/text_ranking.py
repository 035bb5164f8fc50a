"""Passages ranked for a query by a modelpress text-ranking bundle (a one-label cross-encoder),
with onnxruntime + tokenizers only."""

import json
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

bundle = sys.argv[1]
query, passages = (sys.argv[2], sys.argv[3:]) if len(sys.argv) > 3 else ("a cat", ["the cat sat", "a dog runs"])
meta = json.load(open(f"{bundle}/bundle.json"))
pad = json.load(open(f"{bundle}/tokenizer/tokenizer_config.json"))["pad_token"]
tok = Tokenizer.from_file(f"{bundle}/tokenizer/tokenizer.json")
tok.enable_truncation(meta["max_length"])  # longest first, as the bundle truncates a pair
tok.enable_padding(pad_id=tok.token_to_id(pad), pad_token=pad)
session = ort.InferenceSession(f"{bundle}/{meta['runtimes']['onnxruntime']}")
enc = tok.encode_batch([(query, p) for p in passages])
feed = {"input_ids": [e.ids for e in enc], "attention_mask": [e.attention_mask for e in enc]}
feed["token_type_ids"] = [e.type_ids for e in enc]  # 0 for the query, 1 for the passage (BERT)
feed = {i.name: np.array(feed[i.name], dtype=np.int64) for i in session.get_inputs()}
scores = session.run(["logits"], feed)[0][:, 0]
order = np.argsort(-scores, kind="stable")
print(json.dumps([{"index": int(i), "score": float(scores[i]), "passage": passages[i]} for i in order]))
