"""Fidelity metrics, teacher vs candidate, per task. Pure numpy / scipy on head outputs.

Embeddings: mean/min cosine per text, nearest-neighbour agreement within the eval set, and
Spearman of pair similarities vs gold scores (for teacher and candidate) when the set has them.
Classification: top-1 agreement, accuracy vs labels when present, mean KL(teacher ‖ candidate).
Token classification: the same per word, plus entity-level F1 for BIO/BIOES tag sets. Which metric
a task gates on, and in which direction each is better, is the task registry's (modelpress.tasks).
"""

from __future__ import annotations

import numpy as np

from modelpress.errors import BadInputError
from modelpress.measures.entities import entity_scores, is_chunk_tagset


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


_unit = unit


def kl_per_row(teacher: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """KL(softmax(teacher) ‖ softmax(candidate)) per row of logits."""
    lt, lc = _log_softmax(teacher.astype(np.float64)), _log_softmax(candidate.astype(np.float64))
    return (np.exp(lt) * (lt - lc)).sum(axis=-1)


def pair_spearman(emb: np.ndarray, pairs) -> float:
    e = _unit(emb)
    i = np.array([p[0] for p in pairs])
    j = np.array([p[1] for p in pairs])
    gold = np.array([p[2] for p in pairs])
    if len(pairs) < 3 or np.ptp(gold) == 0:
        raise BadInputError(
            f"spearman cannot be computed: the {len(pairs)} gold score(s) of the eval set are "
            f"{'all equal' if len(pairs) >= 3 else 'too few'}; give varied scores"
        )
    from scipy.stats import spearmanr  # the pressing side's (a deployment host has no scipy)

    sims = (e[i] * e[j]).sum(axis=1)
    return float(spearmanr(sims, gold).statistic)


def nearest_neighbours(emb: np.ndarray) -> np.ndarray:
    e = _unit(emb)
    sims = e @ e.T
    np.fill_diagonal(sims, -np.inf)
    return sims.argmax(axis=1)


def embedding_metrics(teacher: np.ndarray, candidate: np.ndarray, pairs=None) -> dict[str, float]:
    cos = (_unit(teacher) * _unit(candidate)).sum(axis=1)
    out = {
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
        "nn_agreement": float((nearest_neighbours(teacher) == nearest_neighbours(candidate)).mean())
        if len(teacher) > 2
        else 1.0,
    }
    if pairs:
        out["spearman"] = pair_spearman(candidate, pairs)
    return out


def embedding_reference_metrics(teacher: np.ndarray, pairs=None) -> dict[str, float]:
    """The teacher's own values of the same keys (cosine with itself is 1 by definition)."""
    out = {"mean_cosine": 1.0, "min_cosine": 1.0, "nn_agreement": 1.0}
    if pairs:
        out["spearman"] = pair_spearman(teacher, pairs)
    return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def classification_metrics(teacher: np.ndarray, candidate: np.ndarray, labels=None) -> dict[str, float]:
    out = {
        "top1_agreement": float((teacher.argmax(-1) == candidate.argmax(-1)).mean()),
        "mean_kl": float(kl_per_row(teacher, candidate).mean()),
    }
    if labels:
        out["accuracy"] = float((candidate.argmax(-1) == np.asarray(labels)).mean())
    return out


def classification_reference_metrics(teacher: np.ndarray, labels=None) -> dict[str, float]:
    out = {"top1_agreement": 1.0, "mean_kl": 0.0}
    if labels:
        out["accuracy"] = float((teacher.argmax(-1) == np.asarray(labels)).mean())
    return out


def token_metrics(
    teacher: list[np.ndarray], candidate: list[np.ndarray], tags=None, label_names=()
) -> dict[str, float]:
    """Word-level metrics of a tagger: per sentence an array [words, labels] of logits, a row for
    every input word (long sentences are windowed, a word without a token of its own is read at a
    neighbour's position). ``entity_f1`` only when the labels are a BIO/BIOES tag set."""
    out = classification_metrics(np.concatenate(teacher), np.concatenate(candidate))
    if tags is not None:
        gold = [np.asarray(t[: len(c)]) for t, c in zip(tags, candidate)]
        predicted = [c.argmax(-1) for c in candidate]
        out["accuracy"] = float((np.concatenate(predicted) == np.concatenate(gold)).mean())
        if label_names and is_chunk_tagset(label_names):
            name = list(label_names)
            out["entity_f1"] = entity_scores(
                [[name[i] for i in g] for g in gold], [[name[i] for i in p] for p in predicted]
            )["f1"]
    return out
