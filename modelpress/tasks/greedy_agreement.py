"""Greedy-generation agreement (text-generation): how much of the teacher's greedy continuation of
each eval prompt a candidate reproduces.

The prompts (``task_options.prompts``: a .txt with a prompt per line, or .jsonl / .csv with
``task_options.prompt_field``) are tokenized once. Every model — the PyTorch teacher through its own
cache layout, each graph through the bundle's KV-cache loop (``modelpress.generation``) — continues
them greedily for ``task_options.generation_tokens`` new tokens, with no stop token, so every row has
exactly that many. Prompts are batched by length (``validate.batch_size`` per batch, left-padded)
in the same batches for every model. The metric, ``greedy_agreement``, is the share of
position-by-position identical new tokens over all prompts (the issue's "share of the first 32 new
tokens identical to the teacher's"); its interval resamples prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from modelpress.calibration_data.loaders import load_texts
from modelpress.generation import TextGenerator


@dataclass(frozen=True)
class Continuations:
    """One model's greedy continuation of each eval prompt, in the eval set's prompt order."""

    tokens: tuple[tuple[int, ...], ...]


def read_prompts(path: str | Path, tokenizer: Any, *, field: str) -> tuple[tuple[int, ...], ...]:
    """The prompts' token ids (the tokenizer's own special tokens included, as ``generate`` encodes)."""
    texts = load_texts(path, text_field="text" if Path(path).suffix == ".txt" else field)
    return tuple(tuple(int(t) for t in tokenizer(text)["input_ids"]) for text in texts)


def continue_greedily(
    predictor: Any, prompts: Sequence[Sequence[int]], *, new_tokens: int, batch_size: int
) -> Continuations:
    """``predictor``'s greedy continuations of ``prompts`` (``new_tokens`` each, no stop token)."""
    # the graph's layout makes the prefill's empty past; every step feeds back the model's own
    # present by name, so the PyTorch teacher keeps its own cache (its FeedStep replaces an empty past)
    generator = TextGenerator(predictor.runner, predictor.encoder.tokenizer, layout=predictor.encoder.layout)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[tuple[int, ...]] = [()] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        made = generator.generate_ids([list(prompts[i]) for i in rows], max_new_tokens=new_tokens, stop_token_ids=[])
        for i, tokens in zip(rows, made):
            out[i] = tuple(tokens)
    return Continuations(tuple(out))


def agreement_counts(teacher: Continuations, candidate: Continuations) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt: new tokens identical at the same position, and the teacher's new tokens."""
    same = [sum(int(a == b) for a, b in zip(t, c)) for t, c in zip(teacher.tokens, candidate.tokens, strict=True)]
    return np.asarray(same, dtype=np.float64), np.asarray([len(t) for t in teacher.tokens], dtype=np.float64)


def greedy_agreement(teacher: Continuations, candidate: Continuations) -> float:
    same, n = agreement_counts(teacher, candidate)
    return float(same.sum() / n.sum())
