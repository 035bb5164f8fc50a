"""The text modality: a Hugging Face tokenizer turns strings (or sentences pre-split into words)
into ``input_ids`` / ``attention_mask`` / ``token_type_ids``, all ``[batch, sequence]`` int64.

Words map to tokens through character offsets (fast tokenizers), not ``is_split_into_words``:
byte-level BPE tokenizers (RoBERTa, GPT-2) then need no ``add_prefix_space``, and a word's first
sub-token is the first token whose last character lies inside it.
"""
from __future__ import annotations

import bisect
import inspect
from typing import Any, Mapping, Sequence

import numpy as np

from modelpress.errors import BadInputError
from modelpress.modalities import Batch, Encoder, Modality

#: the order of the graph's inputs (a model takes a prefix-compatible subset)
CANONICAL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
EXAMPLE_TEXTS = ("The quick brown fox jumps over the lazy dog.", "Export me, please.")
PARITY_TEXTS = (
    "A much longer sentence than the export example, so the sequence length differs from it.",
    "Short one.",
    "Batch size three also differs from the two-text example batch used for tracing.",
)
EXAMPLE_SEQ, PARITY_SEQ = 16, 23
#: families whose position ids start after the padding index (RoBERTa: 514 embeddings, 512 positions)
OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "data2vec-text"})


class TextEncoder(Encoder):
    def __init__(self, tokenizer: Any, *, input_names: Sequence[str], max_length: int) -> None:
        self.tokenizer = tokenizer
        self.input_names = tuple(input_names)
        self.max_length = max_length

    def _texts(self, examples: Sequence[Any]) -> tuple[list[str], list[list[int]] | None]:
        """The strings to tokenize and, for word lists, each word's first character."""
        if not examples or isinstance(examples[0], str):
            return list(examples), None
        texts, starts = [], []
        for words in examples:
            offsets, pos = [], 0
            for w in words:
                offsets.append(pos)
                pos += len(w) + 1
            texts.append(" ".join(words))
            starts.append(offsets)
        return texts, starts

    def encode(self, examples: Sequence[Any], *, pad_to: int | None = None) -> Batch:
        texts, starts = self._texts(examples)
        enc = self.tokenizer(texts, truncation=True, return_tensors="np", max_length=pad_to or self.max_length,
                             padding="max_length" if pad_to else "longest",
                             return_offsets_mapping=starts is not None)
        feed = {k: np.ascontiguousarray(enc[k], dtype=np.int64) for k in self.input_names if k in enc}
        if starts is None:
            return Batch(feed)
        firsts = []
        for offsets, word_starts, mask in zip(enc["offset_mapping"], starts, enc["attention_mask"]):
            first: dict[int, int] = {}
            for t, (s, e) in enumerate(offsets):
                if e > s and mask[t]:
                    first.setdefault(bisect.bisect_right(word_starts, int(e) - 1) - 1, t)
            # words cut off by truncation have no token; those kept are a prefix of the sentence
            n = 0
            while n in first:
                n += 1
            firsts.append(np.array([first[w] for w in range(n)], dtype=np.int64))
        return Batch(feed, first_tokens=tuple(firsts))

    def lengths(self, examples: Sequence[Any]) -> list[int]:
        texts, _ = self._texts(examples)
        return [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]]


class TextModality(Modality):
    name = "text"
    preprocessor_dir = "tokenizer"

    def load_preprocessor(self, ref: str, *, trust_remote_code: bool = False) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)

    def distill_corpus(self, cfg: Any, tokenizer: Any, *, label2id, num_labels, per_token: bool) -> Any:
        from modelpress.distill.data import load_corpus, tokenize_corpus

        corpus = load_corpus(cfg, label2id=label2id, num_labels=num_labels or 0, per_token=per_token)
        return tokenize_corpus(tokenizer, corpus, max_length=cfg.max_length)

    def load_examples(self, path, *, field: str, num_samples: int | None, seed: int = 0) -> list[str]:
        from modelpress.calibration_data.loaders import load_texts, sample

        return sample(load_texts(path, text_field=field), num_samples, seed=seed)

    def model_inputs(self, model: Any, tokenizer: Any) -> tuple[str, ...]:
        """Inputs both the tokenizer produces and the model's forward accepts, in canonical order."""
        accepted = set(inspect.signature(model.forward).parameters)
        produced = set(getattr(tokenizer, "model_input_names", CANONICAL_INPUTS))
        names = tuple(n for n in CANONICAL_INPUTS if n in accepted and n in produced)
        if names[:2] != ("input_ids", "attention_mask"):
            raise BadInputError(f"{type(model).__name__}: export needs input_ids and attention_mask inputs")
        return names

    def check_graph_inputs(self, names: Sequence[str], *, source: object = "") -> tuple[str, ...]:
        unknown = [n for n in names if n not in CANONICAL_INPUTS]
        if unknown or "input_ids" not in names:
            raise BadInputError(f"{source}: its inputs ({', '.join(names)}) are not a text model's "
                                f"({', '.join(CANONICAL_INPUTS)})")
        return tuple(names)

    def encoder(self, tokenizer: Any, *, input_names: Sequence[str], max_length: int,
                input_shapes: Mapping[str, Sequence[Any]] | None = None) -> TextEncoder:
        return TextEncoder(tokenizer, input_names=input_names, max_length=max_length)

    def export_examples(self, tokenizer: Any, input_names: Sequence[str]) -> tuple[dict, dict]:
        import torch

        def encode(texts, seq):
            enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
            return {k: enc[k].to(torch.int64) for k in input_names}
        return encode(EXAMPLE_TEXTS, EXAMPLE_SEQ), encode(PARITY_TEXTS, PARITY_SEQ)

    def dynamic_shapes(self, input_names: Sequence[str]) -> dict[str, dict[int, Any]]:
        import torch

        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        return {k: {0: batch, 1: seq} for k in input_names}

    def real_positions(self, feed: Mapping[str, np.ndarray]) -> np.ndarray | None:
        return feed.get("attention_mask")

    def engine_profile(self, input_names: Sequence[str], cfg: Any) -> dict[str, dict[str, tuple[int, ...]]]:
        """Every text input is [batch, sequence]: one (batch, seq) range from ``[engine]`` fits all."""
        unknown = [n for n in input_names if n not in CANONICAL_INPUTS]
        if unknown:
            raise BadInputError(f"input '{unknown[0]}' is not one of {', '.join(CANONICAL_INPUTS)}; "
                                "no optimization profile can be made for it")
        shapes = {"min": (cfg.min_batch, cfg.min_seq), "opt": (cfg.opt_batch, cfg.opt_seq),
                  "max": (cfg.max_batch, cfg.max_seq)}
        return {name: dict(shapes) for name in input_names}

    def position_limit(self, model_config: Any, tokenizer: Any = None) -> int | None:
        """``max_position_embeddings`` (less the RoBERTa family's padding offset), capped by the
        tokenizer's ``model_max_length`` when it states a real one."""
        limit = getattr(model_config, "max_position_embeddings", None)
        limit = int(limit) if isinstance(limit, int) and limit > 0 else None
        if limit is not None and getattr(model_config, "model_type", "") in OFFSET_POSITIONS:
            limit -= int(getattr(model_config, "pad_token_id", 1) or 1) + 1
        stated = getattr(tokenizer, "model_max_length", None)
        if isinstance(stated, int) and 0 < stated < 1_000_000:
            limit = min(limit, stated) if limit is not None else stated
        return limit


TEXT = TextModality()
