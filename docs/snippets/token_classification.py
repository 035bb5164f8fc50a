"""A tag per word from a modelpress token-classification bundle, with onnxruntime + tokenizers only:
each word is read at its first sub-token (texts within the bundle's max_length)."""

import json
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

bundle, texts = sys.argv[1], sys.argv[2:] or ["the cat sat on the mat", "a dog runs"]
meta = json.load(open(f"{bundle}/bundle.json"))
pad = json.load(open(f"{bundle}/tokenizer/tokenizer_config.json"))["pad_token"]
tok = Tokenizer.from_file(f"{bundle}/tokenizer/tokenizer.json")
tok.enable_truncation(meta["max_length"])
tok.enable_padding(pad_id=tok.token_to_id(pad), pad_token=pad)
session = ort.InferenceSession(f"{bundle}/{meta['runtimes']['onnxruntime']}")
words = [t.split() for t in texts]
enc = tok.encode_batch(words, is_pretokenized=True)
feed = {"input_ids": [e.ids for e in enc], "attention_mask": [e.attention_mask for e in enc]}
feed["token_type_ids"] = [e.type_ids for e in enc]
feed = {i.name: np.array(feed[i.name], dtype=np.int64) for i in session.get_inputs()}
logits = session.run(["logits"], feed)[0]
tags = []
for row, (e, ws) in enumerate(zip(enc, words)):
    first = {w: t for t, w in reversed(list(enumerate(e.word_ids))) if w is not None}
    tags.append([(w, meta["label_names"][int(logits[row, first[i]].argmax())]) for i, w in enumerate(ws)])
print(json.dumps(tags))
