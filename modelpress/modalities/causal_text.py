"""The causal-text modality: text as one stream of tokens for a decoder LM with a KV cache.

A corpus becomes one token stream (each text, then the end-of-sequence token: the GPT-2 training
convention), cut into sequences (calibration: packed ``calibration.max_length``-token sequences)
or strided windows (perplexity, ``measures.perplexity``). A feed is the KV-cache graph's prefill
(``export.causal_lm``): ``input_ids`` / ``attention_mask`` / ``position_ids`` [batch, n] and an
empty past per layer, whose static head count and head size the encoder reads from the graph's
input shapes. Rows of a batch are right-padded: a causal model's earlier positions never see the
padding after them, and the mask keeps it out of calibration statistics.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from modelpress.errors import BadInputError
from modelpress.modalities import Batch, Encoder
from modelpress.modalities.text import TextModality
from modelpress.calibration_data.loaders import load_texts
from modelpress.kv_cache import FIXED_INPUTS, KVLayout

log = logging.getLogger(__name__)


def token_stream(texts: Sequence[str], tokenizer: Any, *, limit: int | None = None) -> np.ndarray:
    """The texts' tokens end to end, each text followed by the end-of-sequence token (when the
    tokenizer has one); ``limit`` stops once that many tokens are collected."""
    eos = getattr(tokenizer, "eos_token_id", None)
    pieces, total = [], 0
    for start in range(0, len(texts), 256):  # tokenized in chunks: a large corpus never at once
        for ids in tokenizer(list(texts[start : start + 256]), add_special_tokens=False)["input_ids"]:
            if eos is not None:
                ids = [*ids, int(eos)]
            pieces.append(np.asarray(ids, dtype=np.int64))
            total += len(ids)
        if limit is not None and total >= limit:
            break
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    return stream[:limit] if limit is not None else stream


def pack(texts: Sequence[str], tokenizer: Any, *, length: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` sequences of ``length`` tokens packed from the texts, shuffled by ``seed`` first
    (another seed calibrates on other text); the last one may be shorter."""
    order = list(texts)
    random.Random(seed).shuffle(order)
    stream = token_stream(order, tokenizer, limit=length * count)
    if len(stream) < 2:
        raise BadInputError("calibration.data: the text has fewer than 2 tokens")
    chunks = [stream[i : i + length] for i in range(0, len(stream), length)]
    chunks = [c for c in chunks if len(c) >= 2]
    if len(chunks) < count:
        log.info(
            "calibration: the text packs into %d sequence(s) of up to %d tokens (asked %d)", len(chunks), length, count
        )
    return chunks


@dataclass(frozen=True)
class ScoredBatch(Batch):
    """A batch of token rows: ``positions[i]`` are the positions of row ``i`` whose next-token
    predictions are read (a window's scored tokens; a timing batch's last one)."""

    positions: tuple[np.ndarray, ...] = ()


class CausalEncoder(Encoder):
    """Token sequences (arrays of ids, or ``measures.perplexity.Window``) → prefill feeds."""

    def __init__(
        self, tokenizer: Any, *, input_names: Sequence[str], max_length: int, input_shapes: Mapping[str, Sequence[Any]]
    ) -> None:
        self.tokenizer = tokenizer
        self.input_names = tuple(input_names)
        self.max_length = max_length
        self.layout = KVLayout.from_shapes(input_shapes)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else (getattr(tokenizer, "eos_token_id", None) or 0))

    @staticmethod
    def _ids(example: Any) -> tuple[np.ndarray, int]:
        """(token ids, how many final next-token predictions count)."""
        ids = getattr(example, "ids", example)
        ids = np.asarray(ids, dtype=np.int64)
        return ids, int(getattr(example, "scored", len(ids) - 1))

    def encode(self, examples: Sequence[Any], *, pad_to: int | None = None) -> "ScoredBatch":
        rows = [self._ids(e) for e in examples]
        if pad_to:  # a timing batch: pad_to tokens each, only the last prediction read back
            rows = [(ids[:pad_to], 1) for ids, _ in rows]
        width = pad_to or max(len(ids) for ids, _ in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        positions = []
        for r, (row, scored) in enumerate(rows):
            ids[r, : len(row)] = row
            mask[r, : len(row)] = 1
            # position t predicts token t + 1: the last ``scored`` targets of the row
            positions.append(np.arange(len(row) - 1 - scored, len(row) - 1, dtype=np.int64))
        feed = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": np.arange(width, dtype=np.int64)[None].repeat(len(rows), 0),
            **self.layout.empty(len(rows)),
        }
        return ScoredBatch({k: feed[k] for k in self.input_names}, positions=tuple(positions))

    def lengths(self, examples: Sequence[Any]) -> list[int]:
        return [len(self._ids(e)[0]) for e in examples]


class CausalTextModality(TextModality):
    name = "causal-text"
    preprocessor_dir = "tokenizer"

    def load_preprocessor(self, ref: str, *, trust_remote_code: bool = False) -> Any:
        tokenizer = super().load_preprocessor(ref, trust_remote_code=trust_remote_code)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has none; batches pad with it (masked)
        return tokenizer

    def load_deployed(self, folder: Any) -> Any:
        tokenizer = super().load_deployed(folder)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # as load_preprocessor: batches pad with it (masked)
        return tokenizer

    def load_examples(self, path, *, field: str, num_samples: int | None, seed: int = 0) -> list[str]:
        """Every text, in file order: they are packed into token sequences once the tokenizer is
        loaded (:meth:`calibration_examples`), so ``num_samples`` counts sequences, not texts."""
        return load_texts(path, text_field=field)

    def calibration_examples(
        self, examples: Sequence[Any], preprocessor: Any, *, max_length: int, num_samples: int, seed: int = 0
    ) -> list[np.ndarray]:
        return pack(examples, preprocessor, length=max_length, count=num_samples, seed=seed)

    def model_inputs(self, model: Any, tokenizer: Any) -> tuple[str, ...]:
        return (*FIXED_INPUTS, *KVLayout.from_config(model.config).past_names())

    def check_graph_inputs(self, names: Sequence[str], *, source: object = "") -> tuple[str, ...]:
        if tuple(names[:3]) != FIXED_INPUTS or not any(n.startswith("past_key_values.") for n in names):
            raise BadInputError(
                f"{source}: its inputs ({', '.join(names)}) are not a KV-cache decoder's "
                f"({', '.join(FIXED_INPUTS)}, past_key_values.*)"
            )
        return tuple(names)

    def encoder(
        self,
        tokenizer: Any,
        *,
        input_names: Sequence[str],
        max_length: int,
        input_shapes: Mapping[str, Sequence[Any]] | None = None,
    ) -> CausalEncoder:
        if not input_shapes:
            raise BadInputError(
                "a text-generation graph's input shapes are needed to feed its cache "
                "(bundle.json or the .onnx file gives them)"
            )
        return CausalEncoder(tokenizer, input_names=input_names, max_length=max_length, input_shapes=input_shapes)

    def export_examples(self, tokenizer: Any, input_names: Sequence[str]) -> tuple[dict, dict]:
        raise BadInputError("text-generation exports through export.causal_lm (its own examples)")

    def dynamic_shapes(self, input_names: Sequence[str]) -> dict[str, dict[int, Any]]:
        raise BadInputError("text-generation exports through export.causal_lm (its own dynamic shapes)")

    def engine_profile(self, input_names: Sequence[str], cfg: Any) -> dict[str, dict[str, tuple[int, ...]]]:
        raise BadInputError(
            "text-generation has no TensorRT engine yet (its cache needs a profile per input); leave [engine] out"
        )


CAUSAL_TEXT = CausalTextModality()
