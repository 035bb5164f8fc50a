"""Tiny models and corpora built in code, for tests of this stage and of the stages after it.

Everything is written into a caller-given folder: a word-level BERT tokenizer over a small
vocabulary, a randomly initialised BERT teacher (feature extractor or classifier) saved as a
normal HF folder, and a corpus of random sentences over that vocabulary.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

WORDS = (
    "the a cat dog bird sat on mat runs fast slow good bad movie film great awful is was very not "
    "and plot actor scene story funny boring long short old new"
).split()
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def write_tokenizer(folder: Path):
    """A BERT word-piece tokenizer whose vocabulary is :data:`WORDS`; returns it (also saved)."""
    from transformers import BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(SPECIAL + tuple(WORDS)) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def make_teacher(
    folder: Path,
    *,
    task: str = "feature-extraction",
    num_labels: int = 3,
    hidden_size: int = 32,
    num_layers: int = 4,
    heads: int = 2,
    initializer_range: float = 0.1,
    seed: int = 0,
) -> Path:
    """A random tiny BERT teacher saved at ``folder`` (with tokenizer). ``initializer_range`` 0.1
    makes layers matter: a 2-of-4 layer subset starts clearly away from the teacher."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    folder = Path(folder)
    tokenizer = write_tokenizer(folder)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=heads, intermediate_size=2 * hidden_size, max_position_embeddings=64,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    if task == "text-classification":
        config.num_labels = num_labels
        config.id2label = {i: f"class_{i}" for i in range(num_labels)}
        config.label2id = {v: k for k, v in config.id2label.items()}
        model = BertForSequenceClassification(config)
    else:
        model = BertModel(config)
    model.save_pretrained(str(folder))
    return folder


def random_sentences(n: int, *, seed: int = 0, min_words: int = 3, max_words: int = 14) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) for _ in range(n)]


def write_corpus(path: Path, n: int, *, seed: int = 0, num_labels: int | None = None) -> Path:
    """``n`` random sentences as .txt (one per line) or, with ``num_labels``, .jsonl with a label."""
    path = Path(path)
    texts = random_sentences(n, seed=seed)
    if num_labels is None:
        path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    else:
        rng = random.Random(seed + 1)
        lines = [json.dumps({"text": t, "label": rng.randrange(num_labels)}) for t in texts]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
