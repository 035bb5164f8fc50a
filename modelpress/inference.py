"""Text in, task output out: tokenizer → runner → task head. The path a deployment runs.

Both the bundle's int8 model (``modelpress.bundle.load``) and the fp32 teacher go through this
same code, so what validation measures is what users get.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from modelpress.runtimes.base import Runner


class Predictor:
    def __init__(self, runner: Runner, head, tokenizer, *, max_length: int = 128, name: str | None = None):
        self.runner = runner
        self.head = head
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.name = name or runner.name

    def encode(self, texts: Sequence[str], *, pad_to: int | None = None) -> dict[str, np.ndarray]:
        enc = self.tokenizer(list(texts), truncation=True, return_tensors="np",
                             max_length=pad_to or self.max_length,
                             padding="max_length" if pad_to else "longest")
        return {k: np.ascontiguousarray(enc[k], dtype=np.int64) for k in self.runner.input_names if k in enc}

    def predict_feed(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.head(self.runner.run(feed), feed["attention_mask"])

    def predict(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """Outputs in input order; batches are formed from length-sorted texts (less padding)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0,), dtype=np.float32)
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        chunks = []
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            chunks.append(self.predict_feed(self.encode([texts[i] for i in idx])))
        out = np.concatenate(chunks)
        result = np.empty_like(out)
        result[order] = out
        return result
