"""Fidelity metrics, teacher vs candidate, per task. Pure numpy / scipy on head outputs.

Embeddings: mean/min cosine per text, nearest-neighbour agreement within the eval set, and
Spearman of pair similarities vs gold scores (for teacher and candidate) when the set has them.
Classification: top-1 agreement, accuracy vs labels when present, mean KL(teacher ‖ candidate).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pair_spearman(emb: np.ndarray, pairs) -> float:
    e = _unit(emb)
    i = np.array([p[0] for p in pairs])
    j = np.array([p[1] for p in pairs])
    gold = np.array([p[2] for p in pairs])
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
        if len(teacher) > 2 else 1.0,
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
    lt, lc = _log_softmax(teacher.astype(np.float64)), _log_softmax(candidate.astype(np.float64))
    out = {
        "top1_agreement": float((teacher.argmax(-1) == candidate.argmax(-1)).mean()),
        "mean_kl": float((np.exp(lt) * (lt - lc)).sum(axis=-1).mean()),
    }
    if labels:
        out["accuracy"] = float((candidate.argmax(-1) == np.asarray(labels)).mean())
    return out


def classification_reference_metrics(teacher: np.ndarray, labels=None) -> dict[str, float]:
    out = {"top1_agreement": 1.0, "mean_kl": 0.0}
    if labels:
        out["accuracy"] = float((teacher.argmax(-1) == np.asarray(labels)).mean())
    return out


def primary_metric(task: str, available: set[str], requested: str = "auto") -> str:
    """The gate's metric: the gold-label one when the eval set has gold data, else fidelity."""
    if requested != "auto":
        return requested
    if task == "feature-extraction":
        return "spearman" if "spearman" in available else "mean_cosine"
    return "accuracy" if "accuracy" in available else "top1_agreement"
