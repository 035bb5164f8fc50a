"""The one factory of tiny models for tests: random Hugging Face models of any registered task,
built from a config in code and saved as ordinary model folders with a word-level tokenizer.

Nothing here reads the network. ``make_tiny_model`` picks the model class from the task registry
(``Task.auto_class``), so a new task gets tiny test models without a new factory. Corpora of random
sentences over the vocabulary come with it.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: the distillation tests' small vocabulary
WORDS = tuple((
    "the a cat dog bird sat on mat runs fast slow good bad movie film great awful is was very not "
    "and plot actor scene story funny boring long short old new"
).split())


def write_tokenizer(folder: Path, words: Sequence[str] = WORDS, *, model_input_names: Sequence[str] | None = None):
    """A BERT WordPiece tokenizer whose vocabulary is the special tokens + ``words``; saved, returned."""
    from transformers import BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(dict.fromkeys((*SPECIAL, *words))) + "\n", encoding="utf-8")
    # transformers 5.x: the argument is ``vocab``; ``vocab_file=`` is silently ignored there and gives a
    # tokenizer that maps every word to [UNK]
    kwargs = {"model_input_names": list(model_input_names)} if model_input_names else {}
    tokenizer = BertTokenizerFast(vocab=str(vocab), **kwargs)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def tiny_config(family: str, *, vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 2,
                intermediate: int = 64, max_positions: int = 128, initializer_range: float = 0.2, **extra):
    """A tiny config of an encoder family (bert, distilbert, roberta)."""
    import transformers

    if family == "distilbert":
        return transformers.DistilBertConfig(vocab_size=vocab_size, dim=hidden, n_layers=layers, n_heads=heads,
                                             hidden_dim=intermediate, max_position_embeddings=max_positions,
                                             initializer_range=initializer_range, **extra)
    cls = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig}[family]
    positions = max_positions + (2 if family == "roberta" else 0)  # RoBERTa offsets positions by pad + 1
    return cls(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
               intermediate_size=intermediate, max_position_embeddings=positions,
               initializer_range=initializer_range, **extra)


def make_tiny_model(folder: Path, *, task: str = "feature-extraction", family: str = "bert",
                    words: Sequence[str] = WORDS, labels: Sequence[str] | int = 3, seed: int = 0,
                    model_input_names: Sequence[str] | None = None, **config) -> Path:
    """A random tiny model for ``task`` saved at ``folder`` with its tokenizer. ``labels``: the label
    names (or how many) for tasks with a label space; ``config`` goes to :func:`tiny_config`."""
    import torch
    import transformers

    from modelpress.tasks import get_task

    folder = Path(folder)
    if family == "distilbert" and model_input_names is None:
        model_input_names = ["input_ids", "attention_mask"]
    tokenizer = write_tokenizer(folder, words, model_input_names=model_input_names)
    cfg = tiny_config(family, vocab_size=len(tokenizer), **config)
    task_cls = get_task(task)
    if task_cls.needs_labels:
        names = [f"class_{i}" for i in range(labels)] if isinstance(labels, int) else list(labels)
        cfg.num_labels = len(names)
        cfg.id2label = dict(enumerate(names))
        cfg.label2id = {n: i for i, n in enumerate(names)}
    torch.manual_seed(seed)
    model = getattr(transformers, task_cls.auto_class).from_config(cfg).eval()
    model.save_pretrained(str(folder))
    return folder


def make_teacher(folder: Path, *, task: str = "feature-extraction", num_labels: int = 3, hidden_size: int = 32,
                 num_layers: int = 4, heads: int = 2, initializer_range: float = 0.1, seed: int = 0) -> Path:
    """The distillation tests' teacher: a random tiny BERT (max 64 positions). ``initializer_range``
    0.1 makes layers matter: a 2-of-4 layer subset starts clearly away from the teacher."""
    return make_tiny_model(folder, task=task, labels=num_labels, seed=seed, hidden=hidden_size, layers=num_layers,
                           heads=heads, intermediate=2 * hidden_size, max_positions=64,
                           initializer_range=initializer_range)


def random_sentences(n: int, *, seed: int = 0, min_words: int = 3, max_words: int = 14,
                     words: Sequence[str] = WORDS) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(min_words, max_words))) for _ in range(n)]


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
