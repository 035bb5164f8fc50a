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
from typing import Any, Sequence
from modelpress.tasks import get_task

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: the distillation tests' small vocabulary
WORDS = tuple(
    (
        "the a cat dog bird sat on mat runs fast slow good bad movie film great awful is was very not "
        "and plot actor scene story funny boring long short old new"
    ).split()
)


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


def tiny_config(
    family: str,
    *,
    vocab_size: int,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    intermediate: int = 64,
    max_positions: int = 128,
    initializer_range: float = 0.2,
    **extra,
):
    """A tiny config of an encoder family (bert, distilbert, roberta)."""
    import transformers

    if family == "distilbert":
        return transformers.DistilBertConfig(
            vocab_size=vocab_size,
            dim=hidden,
            n_layers=layers,
            n_heads=heads,
            hidden_dim=intermediate,
            max_position_embeddings=max_positions,
            initializer_range=initializer_range,
            **extra,
        )
    cls = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig}[family]
    positions = max_positions + (2 if family == "roberta" else 0)  # RoBERTa offsets positions by pad + 1
    return cls(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=positions,
        initializer_range=initializer_range,
        **extra,
    )


def label_space(labels: Sequence[str] | int) -> dict:
    """``num_labels``, ``id2label`` and ``label2id`` of a config, from names (or how many)."""
    names = [f"class_{i}" for i in range(labels)] if isinstance(labels, int) else list(labels)
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }


def make_tiny_model(
    folder: Path,
    *,
    task: str = "feature-extraction",
    family: str = "bert",
    words: Sequence[str] = WORDS,
    labels: Sequence[str] | int = 3,
    seed: int = 0,
    model_input_names: Sequence[str] | None = None,
    **config,
) -> Path:
    """A random tiny model for ``task`` saved at ``folder`` with its tokenizer. ``labels``: the label
    names (or how many) for tasks with a label space; ``config`` goes to :func:`tiny_config`."""
    import torch
    import transformers

    folder = Path(folder)
    if family == "distilbert" and model_input_names is None:
        model_input_names = ["input_ids", "attention_mask"]
    tokenizer = write_tokenizer(folder, words, model_input_names=model_input_names)
    cfg = tiny_config(family, vocab_size=len(tokenizer), **config)
    task_cls = get_task(task)
    if task_cls.needs_labels:
        for key, value in label_space(labels).items():
            setattr(cfg, key, value)
    torch.manual_seed(seed)
    model = getattr(transformers, task_cls.auto_class).from_config(cfg).eval()
    model.save_pretrained(str(folder))
    return folder


#: tiny decoder families for the text-generation tests (config class, its keys); Qwen3 has grouped
#: key/value heads (2 of 4), so the cache's head count differs from the attention's, and its own
#: head size. (Not Qwen2: transformers 5 loads every qwen2 folder's tokenizer as Qwen2Tokenizer,
#: whatever tokenizer_config.json says, which turns the test tokenizer's words into unknowns.)
CAUSAL_FAMILIES = {
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=2, n_positions=128)),
    "llama": (
        "LlamaConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        ),
    ),
    "qwen3": (
        "Qwen3Config",
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=64,
            max_position_embeddings=128,
        ),
    ),
}


def make_tiny_causal_lm(
    folder: Path, *, family: str = "gpt2", seed: int = 0, initializer_range: float = 0.2, **config: Any
) -> Path:
    """A random tiny causal LM of ``family`` (:data:`CAUSAL_FAMILIES`) with the word tokenizer;
    ``[SEP]`` is its end-of-sequence token, ``[PAD]`` its padding. ``config``: keys over the family's."""
    import torch
    import transformers

    folder = Path(folder)
    tokenizer = write_tokenizer(folder, model_input_names=["input_ids", "attention_mask"])
    tokenizer.eos_token = "[SEP]"
    tokenizer.save_pretrained(str(folder))
    cfg_name, keys = CAUSAL_FAMILIES[family]
    specials = dict(
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id
    )
    cfg = getattr(transformers, cfg_name)(
        vocab_size=len(tokenizer), initializer_range=initializer_range, **specials, **{**keys, **config}
    )
    torch.manual_seed(seed)
    transformers.AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(str(folder))
    return folder


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
    """The distillation tests' teacher: a random tiny BERT (max 64 positions). ``initializer_range``
    0.1 makes layers matter: a 2-of-4 layer subset starts clearly away from the teacher."""
    return make_tiny_model(
        folder,
        task=task,
        labels=num_labels,
        seed=seed,
        hidden=hidden_size,
        layers=num_layers,
        heads=heads,
        intermediate=2 * hidden_size,
        max_positions=64,
        initializer_range=initializer_range,
    )


def random_sentences(
    n: int, *, seed: int = 0, min_words: int = 3, max_words: int = 14, words: Sequence[str] = WORDS
) -> list[str]:
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


#: the tiny vision families: (config class, its arguments, image processor class, its arguments);
#: every processor is the one the family ships with, at a 32×32 resolution
VISION_FAMILIES = {
    "vit": (
        "ViTConfig",
        dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        ),
        "ViTImageProcessor",
        dict(size={"height": 32, "width": 32}),
    ),
    "deit": (
        "DeiTConfig",
        dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            architectures=["DeiTForImageClassification"],
        ),  # the Auto class has two
        "DeiTImageProcessor",
        dict(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32}),
    ),
    "swin": (
        "SwinConfig",
        dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4),
        "ViTImageProcessor",
        dict(size={"height": 32, "width": 32}),
    ),
    "resnet": (
        "ResNetConfig",
        dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"),
        "ConvNextImageProcessor",
        dict(size={"shortest_edge": 32}, crop_pct=0.875),
    ),
    "convnext": (
        "ConvNextConfig",
        dict(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, patch_size=2),
        "ConvNextImageProcessor",
        dict(size={"shortest_edge": 32}, crop_pct=0.875),
    ),
    # 0.25: at the default 0.02 the random 17-block net's activations vanish (logits ~1e-27)
    "mobilenet_v2": (
        "MobileNetV2Config",
        dict(image_size=32, depth_multiplier=0.25, min_depth=8, initializer_range=0.25),
        "MobileNetV2ImageProcessor",
        dict(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}),
    ),
}


def make_tiny_vision_model(
    folder: Path, *, family: str = "vit", labels: Sequence[str] | int = 3, seed: int = 0, **config
) -> Path:
    """A random tiny image classifier of ``family`` (:data:`VISION_FAMILIES`) with its image processor."""
    import torch
    import transformers

    folder = Path(folder)
    cfg_name, cfg_args, proc_name, proc_args = VISION_FAMILIES[family]
    cfg = getattr(transformers, cfg_name)(**{**cfg_args, **config}, **label_space(labels))
    torch.manual_seed(seed)
    model = transformers.AutoModelForImageClassification.from_config(cfg).eval()
    model.save_pretrained(str(folder))
    getattr(transformers, proc_name)(**proc_args).save_pretrained(str(folder))
    return folder


def write_images(
    folder: Path,
    n: int,
    *,
    seed: int = 0,
    size: tuple[int, int] = (40, 30),
    classes: Sequence[str] | None = None,
    modes: Sequence[str] = ("RGB", "L", "RGBA"),
) -> list[Path]:
    """``n`` random images (png and jpg, in several colour modes); with ``classes``, in an
    imagefolder layout (one sub-folder per class, round-robin)."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        mode = modes[i % len(modes)]
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
        where = folder / classes[i % len(classes)] if classes else folder
        where.mkdir(parents=True, exist_ok=True)
        path = where / f"img{i:04d}.{'jpg' if mode == 'RGB' and i % 2 else 'png'}"
        image.save(path)
        paths.append(path)
    return paths
