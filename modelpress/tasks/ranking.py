"""text-ranking's eval sets and metrics: one cross-encoder score per (query, passage) pair.

Formats (``validate.eval_format``):
  * ``pairs``    .jsonl / .csv / .tsv / datasets folder: ``query`` and ``validate.text_field`` (a
                 query and its passage), or ``sentence1`` and ``sentence2``; a gold score in
                 ``score`` (else in ``validate.label_field`` when the file has it), optional
  * ``stsb``     the original STS Benchmark files (read by ``tasks.evalsets``)
  * ``ranking``  .jsonl, a line per query: ``{"query": ..., "passages": [...], "relevance": [...]}``,
                 relevance (optional) a grade ≥ 0 per passage, 0 = not relevant
  * ``auto``     ranking when the first record has ``passages``, stsb when the file looks like it,
                 else pairs
A query is a ranking line, or in the pairs formats the pairs that share their first text.

Metrics of a model's scores:
  * ``spearman``, ``pearson``: against the gold scores of a pairs set
  * ``ndcg_at_10``, ``mrr_at_10``: against a ranking set's relevance, averaged over the queries with a
    relevant passage. NDCG's gain is the grade itself, discounted by log2(rank + 1) (scikit-learn's
    ``ndcg_score``); passages with equal scores share their positions' discounts (sklearn's tie
    averaging) and MRR@10 is likewise its expectation over the orders of tied passages, so a tie
    never wins by the order of the file
  * ``top1_agreement``, ``kendall_tau``: against the teacher's scores, per query of ≥ 2 passages:
    the candidate's first passage is one the teacher scores highest; Kendall's τ-b of the two
    orders (a query whose passages the teacher scores all alike has no order and is left out of τ;
    a candidate that scores them all alike gets 0)
  * ``score_mse``: the mean squared difference of the candidate's scores from the teacher's, per pair
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelpress.calibration_data.loaders import read_records, text_of
from modelpress.errors import BadInputError
from modelpress.modalities.text import TextPair, passages_of
from modelpress.tasks import EvalSet
from modelpress.tasks.evalsets import _looks_like_stsb, stsb_rows

FORMATS = ("pairs", "stsb", "ranking")
K = 10  # the cut-off of NDCG@10 and MRR@10


@dataclass(frozen=True)
class RankingSet(EvalSet):
    """text-ranking's record: the pairs the model scores, grouped into queries."""

    pairs: tuple[TextPair, ...] = ()
    queries: tuple[tuple[int, ...], ...] = ()  # per query, its pairs' indices in file order
    gold: tuple[float, ...] | None = None  # per pair: its gold score (pairs, stsb) or relevance grade (ranking)

    @property
    def examples(self) -> tuple[TextPair, ...]:
        return self.pairs

    @property
    def has_gold(self) -> bool:
        return self.gold is not None

    @property
    def graded(self) -> bool:
        """Relevance grades per query (NDCG, MRR), not scores to correlate with (Spearman)."""
        return self.gold is not None and self.format == "ranking"

    @property
    def ranked(self) -> tuple[tuple[int, ...], ...]:
        """The queries with at least two passages: those an order can be compared on."""
        return tuple(q for q in self.queries if len(q) > 1)

    def counts(self) -> dict[str, Any]:
        return {
            "num_pairs": len(self.pairs),
            "num_words": 0,
            "num_queries": len(self.queries),
            "num_ranked_queries": len(self.ranked),
            "has_gold": self.has_gold,
        }


# -- readers ----------------------------------------------------------------------------------------
def load_ranking_set(
    path: str | Path, *, fmt: str = "auto", text_field: str = "text", label_field: str = "label", num_samples: int = 0
) -> RankingSet:
    """The eval set at ``path``; ``num_samples`` keeps the first pairs (pairs formats) or queries (ranking)."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: evaluation data not found")
    if fmt not in ("auto", *FORMATS):
        raise BadInputError(f"validate.eval_format: text-ranking reads {', '.join(FORMATS)}, not {fmt!r}")
    if fmt == "stsb" or (fmt == "auto" and _looks_like_stsb(path)):
        rows = stsb_rows(path, num_samples=num_samples)
        return _grouped([TextPair(s1, s2) for s1, s2, _ in rows], tuple(s for _, _, s in rows), str(path), "stsb")
    records = read_records(path)
    if fmt == "ranking" or (fmt == "auto" and "passages" in records[0]):
        return _read_ranking(records, str(path), num_samples)
    return _read_pairs(records, str(path), text_field=text_field, label_field=label_field, num_samples=num_samples)


def _read_pairs(records, source: str, *, text_field: str, label_field: str, num_samples: int) -> RankingSet:
    keys = set(records[0])
    fields = ("query", text_field) if "query" in keys else ("sentence1", "sentence2")
    if not set(fields) <= keys:
        raise BadInputError(
            f"{records.where(0)}: a pair needs the fields query and {text_field}, or sentence1 and "
            f"sentence2 (fields: {', '.join(map(str, keys))})"
        )
    gold_field = "score" if "score" in keys else label_field if label_field in keys else None
    rows = range(min(len(records), num_samples or len(records)))
    pairs = [TextPair(_text(records, i, fields[0]), _text(records, i, fields[1])) for i in rows]
    gold = tuple(_number(records, i, gold_field) for i in rows) if gold_field else None
    if gold is not None and len(gold) >= 2 and len(set(gold)) == 1:
        raise BadInputError(
            f"{source}: spearman cannot be computed: the {len(gold)} gold scores in '{gold_field}' "
            "are all equal; give varied scores"
        )
    return _grouped(pairs, gold, source, "pairs")


def _grouped(pairs: list[TextPair], gold: tuple[float, ...] | None, source: str, fmt: str) -> RankingSet:
    """Pairs grouped into queries by their first text, in order of first appearance."""
    queries: dict[str, list[int]] = {}
    for k, pair in enumerate(pairs):
        queries.setdefault(pair.first, []).append(k)
    return RankingSet(
        pairs=tuple(pairs), queries=tuple(tuple(q) for q in queries.values()), gold=gold, source=source, format=fmt
    )


def _read_ranking(records, source: str, num_samples: int) -> RankingSet:
    graded = "relevance" in records[0]
    pairs: list[TextPair] = []
    queries, gold = [], []
    for i in range(min(len(records), num_samples or len(records))):
        query, passages = _text(records, i, "query"), passages_of(records, i)
        if not passages or not all(passages):
            raise BadInputError(f"{records.where(i)}: 'passages' must hold at least one text, none of them empty")
        queries.append(tuple(range(len(pairs), len(pairs) + len(passages))))
        pairs += [TextPair(query, p) for p in passages]
        if graded:
            gold += _grades(records, i, len(passages))
    if graded and not any(g > 0 for g in gold):
        raise BadInputError(f"{source}: no passage is relevant (relevance > 0): NDCG@10 and MRR@10 need one")
    return RankingSet(
        pairs=tuple(pairs),
        queries=tuple(queries),
        gold=tuple(gold) if graded else None,
        source=source,
        format="ranking",
    )


def _grades(records, i: int, n: int) -> list[float]:
    grades = records[i].get("relevance")
    if not isinstance(grades, list) or len(grades) != n:
        raise BadInputError(
            f"{records.where(i)}: 'relevance' must be a list of {n} grades, one per passage "
            "(the first line has relevance)"
        )
    return [_grade(g, records.where(i)) for g in grades]


def _grade(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise BadInputError(f"{where}: relevance {value!r} is not a grade (a number ≥ 0)")
    return float(value)


def _text(records, i: int, field: str) -> str:
    text = text_of(records, i, field)
    if not text:
        raise BadInputError(f"{records.where(i)}: '{field}' is empty")
    return text


def _number(records, i: int, field: str) -> float:
    value = records[i].get(field)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadInputError(f"{records.where(i)}: {field} {value!r} is not a number") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise BadInputError(f"{records.where(i)}: {field} {value!r} is not a finite number")
    return number


# -- per-query measures -------------------------------------------------------------------------------
def _tie_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group of each item, size of each group): groups of equal scores, the highest first."""
    _, group, counts = np.unique(-np.asarray(scores, dtype=np.float64), return_inverse=True, return_counts=True)
    return group.reshape(-1), counts


def ndcg_at_k(scores, relevance, k: int = K) -> float:
    """DCG@k of the order of ``scores`` ÷ the ideal DCG@k (NaN when nothing is relevant); tied
    passages get the mean gain of their group at each of the group's positions."""
    rel = np.asarray(relevance, dtype=np.float64)
    discount = np.zeros(len(rel))
    discount[:k] = 1.0 / np.log2(np.arange(min(k, len(rel))) + 2.0)
    ideal = float((np.sort(rel)[::-1] * discount).sum())
    if ideal == 0:
        return math.nan
    group, counts = _tie_groups(scores)
    mean_gain = np.bincount(group, weights=rel) / counts
    return float((np.repeat(mean_gain, counts) * discount).sum()) / ideal


def mrr_at_k(scores, relevance, k: int = K) -> float:
    """1 / rank of the first relevant passage (relevance > 0) if it is in the top k, else 0; among
    tied passages, its expectation over their orders (NaN when nothing is relevant)."""
    group, counts = _tie_groups(scores)
    relevant = np.bincount(group, weights=np.asarray(relevance, dtype=np.float64) > 0).astype(int)
    before = 0
    for size, r in zip(counts.tolist(), relevant.tolist()):
        if r:
            # the first of r relevant passages among `size` tied ones is at x with C(size - x, r - 1) / C(size, r)
            return sum(
                math.comb(size - x, r - 1) / math.comb(size, r) / (before + x)
                for x in range(1, size - r + 2)
                if before + x <= k
            )
        before += size
    return math.nan


def kendall_tau_b(a, b) -> float:
    """Kendall's τ-b of two orders of the same items: (concordant − discordant pairs) ÷ the
    geometric mean of the pairs each leaves untied; NaN when either ties every pair."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    upper = np.triu_indices(len(a), 1)
    sa, sb = np.sign(a[:, None] - a[None, :])[upper], np.sign(b[:, None] - b[None, :])[upper]
    untied = math.sqrt(float(np.abs(sa).sum()) * float(np.abs(sb).sum()))
    return float((sa * sb).sum()) / untied if untied else math.nan


def graded_per_query(scores: np.ndarray, rs: RankingSet, measure) -> np.ndarray:
    """``measure`` (ndcg_at_k, mrr_at_k) of each query with a relevant passage."""
    gold = np.asarray(rs.gold, dtype=np.float64)
    values = [measure(scores[list(q)], gold[list(q)]) for q in rs.queries]
    return np.array([v for v in values if not math.isnan(v)], dtype=np.float64)


def top1_agreements(teacher: np.ndarray, candidate: np.ndarray, rs: RankingSet) -> np.ndarray:
    """Per query of ≥ 2 passages: whether the passage the candidate ranks first (of tied ones, the
    earliest, as ``rank()`` orders them) is one the teacher scores highest."""
    return np.array(
        [teacher[list(q)][candidate[list(q)].argmax()] == teacher[list(q)].max() for q in rs.ranked], dtype=bool
    )


def kendall_taus(teacher: np.ndarray, candidate: np.ndarray, rs: RankingSet) -> np.ndarray:
    """Per query the teacher orders (≥ 2 passages, not all scored alike): τ-b of the candidate's order."""
    taus = [kendall_tau_b(teacher[list(q)], candidate[list(q)]) for q in rs.ranked if np.ptp(teacher[list(q)]) > 0]
    return np.nan_to_num(np.array(taus, dtype=np.float64), nan=0.0)


# -- metrics --------------------------------------------------------------------------------------------
def pearson(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pearson's r along ``axis`` (vectorized for the bootstrap); 0 where either side is constant."""
    a = a - a.mean(axis=axis, keepdims=True)
    b = b - b.mean(axis=axis, keepdims=True)
    den = np.sqrt((a * a).sum(axis=axis) * (b * b).sum(axis=axis))
    return np.where(den > 0, (a * b).sum(axis=axis) / np.where(den > 0, den, 1.0), 0.0)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import rankdata

    return float(pearson(rankdata(a), rankdata(b)))


def gold_metrics(scores: np.ndarray, rs: RankingSet) -> dict[str, float]:
    """The metrics against the eval set's gold: Spearman and Pearson of a pairs set's scores, NDCG@10
    and MRR@10 of a ranking set's relevance."""
    if rs.gold is None:
        return {}
    if rs.graded:
        return {
            "ndcg_at_10": float(graded_per_query(scores, rs, ndcg_at_k).mean()),
            "mrr_at_10": float(graded_per_query(scores, rs, mrr_at_k).mean()),
        }
    gold = np.asarray(rs.gold, dtype=np.float64)
    return {"spearman": spearman(scores, gold), "pearson": float(pearson(np.asarray(scores, np.float64), gold))}


def ranking_metrics(teacher: np.ndarray, candidate: np.ndarray, rs: RankingSet) -> dict[str, float]:
    """The candidate's metrics: against gold, and against the teacher's scores."""
    out = gold_metrics(candidate, rs)
    agree, taus = top1_agreements(teacher, candidate, rs), kendall_taus(teacher, candidate, rs)
    if len(agree):
        out["top1_agreement"] = float(agree.mean())
    if len(taus):
        out["kendall_tau"] = float(taus.mean())
    out["score_mse"] = float(np.mean((np.asarray(candidate, np.float64) - np.asarray(teacher, np.float64)) ** 2))
    return out


def reference_metrics(teacher: np.ndarray, rs: RankingSet) -> dict[str, float]:
    """The teacher's values of the same keys (its agreement with itself is 1, its MSE 0)."""
    return ranking_metrics(teacher, teacher, rs)


def pearson_drop(scale: float = 100.0):
    """drop = scale · (r(teacher scores, gold) − r(candidate scores, gold)) on the same pairs."""

    def stat(t, c, gold, axis=-1):
        return scale * (pearson(t, gold, axis) - pearson(c, gold, axis))

    return stat
