"""What distillation trains on, per modality: the distill stage's corpus builders, keyed by a modality's
``corpus`` name (text, text pairs, images). Each returns a corpus with ``len``, ``lengths`` (a size per row, for
batching), ``collate(indices)`` (a batch of torch tensors with ``index``) and ``fingerprint``. The modalities
(below the stages) name their builder; only this stage imports the builders.
"""

from __future__ import annotations

import hashlib
from array import array
from typing import Any, Callable

from modelpress.distill.data import FEATURES, TokenizedCorpus, load_corpus, tokenize_corpus
from modelpress.distill.image_data import load_image_corpus
from modelpress.errors import BadInputError
from modelpress.modalities.text import split_pairs
from modelpress.registry import Registry


def text_corpus(modality: Any, cfg: Any, tokenizer: Any, *, label2id, num_labels, per_token: bool) -> Any:
    """``distill.data``'s texts (or tagged sentences), tokenized, with gold labels where asked."""
    corpus = load_corpus(cfg, label2id=label2id, num_labels=num_labels or 0, per_token=per_token)
    return tokenize_corpus(tokenizer, corpus, max_length=cfg.max_length)


def pair_corpus(modality: Any, cfg: Any, tokenizer: Any, *, label2id, num_labels, per_token: bool) -> Any:
    """The pairs of ``distill.data`` tokenized together; the teacher's scores are the only targets."""
    if cfg.label_field is not None:
        raise BadInputError("distill.label_field: text pairs distil on the teacher's scores only; remove it")
    try:
        pairs = modality.load_examples(cfg.data, field=cfg.text_field, num_samples=cfg.num_samples, seed=cfg.seed)
    except BadInputError as exc:
        raise BadInputError(f"distill.data: {exc}") from None
    if len(pairs) < 2:
        raise BadInputError(f"distill.data: {cfg.data}: need at least 2 pairs to distill, found {len(pairs)}")
    if tokenizer.pad_token_id is None:
        raise BadInputError("teacher tokenizer has no padding token; cannot batch texts")
    encoded = tokenizer(*split_pairs(pairs), truncation=True, max_length=cfg.max_length, padding=False)
    features = {name: encoded[name] for name in FEATURES if name in encoded}
    digest = hashlib.sha256()
    for name in sorted(features):  # segment ids too: the same tokens split elsewhere are another pair
        for ids in features[name]:
            digest.update(len(ids).to_bytes(4, "little") + array("q", ids).tobytes())
    return TokenizedCorpus(
        features=features, labels=None, pad_token_id=int(tokenizer.pad_token_id), fingerprint=digest.hexdigest()
    )


def image_corpus(modality: Any, cfg: Any, processor: Any, *, label2id, num_labels, per_token: bool) -> Any:
    """``distill.data``'s images, with gold classes where asked."""
    return load_image_corpus(cfg, processor, label2id=label2id, num_labels=num_labels)


CORPORA: Registry[Callable[..., Any]] = Registry("distillation corpus")
CORPORA.register("text", text_corpus)
CORPORA.register("text-pairs", pair_corpus)
CORPORA.register("image", image_corpus)


def build_corpus(modality: Any, cfg: Any, preprocessor: Any, **kwargs: Any) -> Any:
    """The corpus ``modality`` distils on (``kwargs``: ``label2id``, ``num_labels``, ``per_token``)."""
    return CORPORA.get(modality.corpus)(modality, cfg, preprocessor, **kwargs)
