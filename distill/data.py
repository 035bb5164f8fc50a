"""The distillation corpus: texts (and optional gold labels) read with the calibration loaders,
tokenized once with the teacher's tokenizer, split into train / held-out eval, and padded into
batches on demand. Only text is needed; the teacher provides the targets.

A tagger (per-token target) with ``distill.label_field`` reads a tagged corpus instead (CoNLL-U,
CoNLL, or jsonl with token and tag lists: the eval readers of ``tasks.tagged``); its gold tag
sits on each word's first sub-token, every other token carries ``IGNORE`` (-100).
"""

from __future__ import annotations

import hashlib
from array import array
import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from modelpress.calibration_data.loaders import load_texts, read_records, sample, text_of
from modelpress.distill.config import DistillConfig
from modelpress.errors import BadInputError

from modelpress.distill.losses.hard_label_ce import IGNORE  # noqa: E402  a token without a gold tag
from modelpress.tasks.tagged import load_tagged
from modelpress.modalities.text import TextEncoder

FEATURES = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class Corpus:
    texts: tuple[Any, ...]  # strings, or (tagged corpora) tuples of words
    labels: tuple[Any, ...] | None = None  # class ids, or per text a tag id per word (distill.label_field)


def _label_id(value: Any, *, label2id: Mapping[str, int], num_labels: int, where: str) -> int:
    if str(value) in label2id:
        return int(label2id[str(value)])
    try:
        label = int(str(value).strip()) if not isinstance(value, float) or value.is_integer() else -1
    except ValueError:
        label = -1
    if not 0 <= label < num_labels:
        raise BadInputError(
            f"{where}: label {value!r} is neither a teacher label ({', '.join(map(str, label2id))}) "
            f"nor a class id in 0..{num_labels - 1} (distill.label_field)"
        )
    return label


def load_corpus(
    cfg: DistillConfig, *, label2id: Mapping[str, int] | None = None, num_labels: int = 0, per_token: bool = False
) -> Corpus:
    """The texts (and labels) of ``cfg.data``, sampled to ``cfg.num_samples`` with ``cfg.seed``;
    ``per_token``: the task tags words, and labels are a tagged corpus's tags."""
    try:
        if per_token and cfg.label_field is not None:
            return _load_tagged_corpus(cfg, label2id=label2id or {})
        return _load_corpus(cfg, label2id=label2id, num_labels=num_labels)
    except BadInputError as exc:
        raise BadInputError(f"distill.data: {exc}") from None


def _load_tagged_corpus(cfg: DistillConfig, *, label2id: Mapping[str, int]) -> Corpus:

    es = load_tagged(
        cfg.data,  # type: ignore[arg-type]  # distill.data is set: distillation refuses a recipe without it first
        label2id=label2id,
        tags_field=cfg.label_field,  # type: ignore[arg-type]  # set: only a tagged corpus with a label field comes here
        tokens_field=cfg.text_field if cfg.text_field != "text" else "tokens",
    )
    if es.tags is None:
        raise BadInputError(f"{cfg.data}: no tags in '{cfg.label_field}' (distill.label_field)")
    pairs = sample(list(zip(es.words, es.tags)), cfg.num_samples, seed=cfg.seed)
    if len(pairs) < 2:
        raise BadInputError(f"{cfg.data}: need at least 2 sentences to distill, found {len(pairs)}")
    return Corpus(texts=tuple(w for w, _ in pairs), labels=tuple(t for _, t in pairs))


def _load_corpus(cfg: DistillConfig, *, label2id: Mapping[str, int] | None, num_labels: int) -> Corpus:
    if cfg.label_field is None:
        texts = sample(load_texts(cfg.data, text_field=cfg.text_field), cfg.num_samples, seed=cfg.seed)  # type: ignore[arg-type]  # distill.data is set: distillation refuses a recipe without it first
        corpus = Corpus(texts=tuple(texts))
    else:
        records = read_records(cfg.data)  # type: ignore[arg-type]  # distill.data is set: distillation refuses a recipe without it first
        for field in (cfg.text_field, cfg.label_field):
            if field not in records[0]:
                raise BadInputError(f"{cfg.data}: no field '{field}' (fields: {', '.join(map(str, records[0]))})")
        pairs = []
        for row, record in enumerate(records):
            text = text_of(records, row, cfg.text_field)
            if not text:
                continue
            if record.get(cfg.label_field) in (None, ""):
                raise BadInputError(f"{records.where(row)}: no '{cfg.label_field}' (distill.label_field)")
            label = _label_id(
                record[cfg.label_field], label2id=label2id or {}, num_labels=num_labels, where=records.where(row)
            )
            pairs.append((text, label))
        pairs = sample(pairs, cfg.num_samples, seed=cfg.seed)
        if not pairs:
            raise BadInputError(f"{cfg.data}: field '{cfg.text_field}' holds no text")
        corpus = Corpus(texts=tuple(t for t, _ in pairs), labels=tuple(lab for _, lab in pairs))
    if len(corpus.texts) < 2:
        raise BadInputError(f"{cfg.data}: need at least 2 texts to distill, found {len(corpus.texts)}")
    return corpus


@dataclass(frozen=True)
class TokenizedCorpus:
    """Token ids per text, unpadded; :meth:`collate` pads a batch of indices."""

    features: Mapping[str, Sequence[Sequence[int]]]  # input_ids, attention_mask[, token_type_ids]
    labels: tuple[Any, ...] | None  # per text a class id, or a label per token (IGNORE off first sub-tokens)
    pad_token_id: int
    fingerprint: str  # sha256 of the token ids and labels (checkpoint and cache validity)

    def __len__(self) -> int:
        return len(self.features["input_ids"])

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.features["input_ids"]]

    def collate(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """A right-padded batch: model inputs, ``labels`` when present, and ``index`` (corpus rows)."""
        indices = [int(i) for i in indices]
        width = max(len(self.features["input_ids"][i]) for i in indices)
        batch = {}
        for name, rows in self.features.items():
            pad = self.pad_token_id if name == "input_ids" else 0
            out = torch.full((len(indices), width), pad, dtype=torch.long)
            for r, i in enumerate(indices):
                out[r, : len(rows[i])] = torch.tensor(rows[i], dtype=torch.long)
            batch[name] = out
        if self.labels is not None and self.labels and isinstance(self.labels[0], (list, tuple)):
            out = torch.full((len(indices), width), IGNORE, dtype=torch.long)
            for r, i in enumerate(indices):
                out[r, : len(self.labels[i])] = torch.tensor(self.labels[i], dtype=torch.long)
            batch["labels"] = out
        elif self.labels is not None:
            batch["labels"] = torch.tensor([self.labels[i] for i in indices], dtype=torch.long)
        batch["index"] = torch.tensor(indices, dtype=torch.long)
        return batch


def tokenize_corpus(tokenizer: Any, corpus: Corpus, *, max_length: int) -> TokenizedCorpus:
    """Tokenize every text once (truncated to ``max_length``, no padding); the words of a tagged
    corpus map to tokens as inference maps them (``modalities.text``), tags on first sub-tokens."""
    if tokenizer.pad_token_id is None:
        raise BadInputError("teacher tokenizer has no padding token; cannot batch texts")
    labels = corpus.labels
    if corpus.texts and not isinstance(corpus.texts[0], str):
        names = tuple(n for n in FEATURES if n in getattr(tokenizer, "model_input_names", FEATURES))
        encoder = TextEncoder(tokenizer, input_names=names, max_length=max_length)
        features: dict[str, list[list[int]]] = {n: [] for n in names}
        token_labels = []
        for k, words in enumerate(corpus.texts):
            batch = encoder.encode([list(words)])
            n = int(batch.feed["attention_mask"][0].sum())
            for name in names:
                features[name].append(batch.feed[name][0, :n].tolist())
            row = [IGNORE] * n
            if labels is not None:
                for w, t in enumerate(batch.first_tokens[0]):  # type: ignore[attr-defined]  # a word-list batch (text modality's WordBatch)
                    row[int(t)] = int(labels[k][w])
            token_labels.append(tuple(row))
        labels = tuple(token_labels) if labels is not None else None
    else:
        encoded = tokenizer(list(corpus.texts), truncation=True, max_length=max_length, padding=False)
        features = {name: encoded[name] for name in FEATURES if name in encoded}
    digest = hashlib.sha256()
    for ids in features["input_ids"]:
        digest.update(len(ids).to_bytes(4, "little"))
        digest.update(array("q", ids).tobytes())
    if labels is not None:
        digest.update(repr(labels).encode())
    return TokenizedCorpus(
        features=features, labels=labels, pad_token_id=int(tokenizer.pad_token_id), fingerprint=digest.hexdigest()
    )


def split_indices(n: int, eval_fraction: float, *, seed: int) -> tuple[list[int], list[int]]:
    """A deterministic (train, eval) split of ``range(n)``; eval gets ``round(n * eval_fraction)``
    rows (at least one when the fraction is positive), train keeps the rest in corpus order."""
    n_eval = 0 if eval_fraction <= 0 else min(n - 1, max(1, round(n * eval_fraction)))
    held_out = set(random.Random(seed).sample(range(n), n_eval))
    return [i for i in range(n) if i not in held_out], sorted(held_out)


class IndexDataset(torch.utils.data.Dataset):
    """Items are corpus row numbers; a batch sampler picks them and ``TokenizedCorpus.collate`` pads."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i
