"""Turn texts into model feeds: re-iterable batches of ``{input_name: int64 ndarray}``.

Used by calibration (quantization ranges), validation and benchmarks. Batches are padded to the
longest text in the batch (dynamic padding) unless ``pad_to_max_length`` asks for fixed shapes,
and tokenized lazily, one batch at a time, so a large corpus is never held as tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from modelpress.errors import BadInputError


@dataclass(frozen=True)
class TokenizedFeed:
    """A re-iterable stream of tokenized batches over a fixed list of texts."""

    texts: Sequence[str]
    tokenizer: Any
    batch_size: int = 32
    max_length: int = 128
    pad_to_max_length: bool = False
    #: restrict to these tokenizer outputs (the model's input names); None keeps all
    input_names: tuple[str, ...] | None = None
    #: sort texts by token length first (real-workload serving order; fewer pad tokens)
    sort_by_length: bool = False

    def __post_init__(self) -> None:
        if not self.texts:
            raise BadInputError("no texts to tokenize (the data source is empty)")
        if self.batch_size < 1 or self.max_length < 2:
            raise BadInputError("batch_size must be >= 1 and max_length >= 2")

    def _ordered_texts(self) -> list[str]:
        texts = list(self.texts)
        if self.sort_by_length:
            lengths = [
                len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
            ]
            texts = [texts[i] for i in np.argsort(lengths, kind="stable")]
        return texts

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        enc = self.tokenizer(
            list(texts),
            padding="max_length" if self.pad_to_max_length else "longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="np",
        )
        names = self.input_names or tuple(enc.keys())
        return {k: np.ascontiguousarray(enc[k], dtype=np.int64) for k in names if k in enc}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        texts = self._ordered_texts()
        for start in range(0, len(texts), self.batch_size):
            yield self.encode(texts[start : start + self.batch_size])

    def __len__(self) -> int:
        return -(-len(self.texts) // self.batch_size)


@dataclass(frozen=True)
class ExampleFeed:
    """A re-iterable stream of feeds over raw examples of any modality, encoded batch by batch by
    the model's encoder (``modelpress.modalities``): what calibration and analysis read."""

    examples: Sequence[Any]
    encoder: Any
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not self.examples:
            raise BadInputError("no examples to calibrate on (the data source is empty)")
        if self.batch_size < 1:
            raise BadInputError("batch_size must be >= 1")

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.examples), self.batch_size):
            yield dict(self.encoder.encode(list(self.examples[start : start + self.batch_size])).feed)

    def __len__(self) -> int:
        return -(-len(self.examples) // self.batch_size)
