"""Entity chunks of BIO / BIOES tag sequences and entity-level precision / recall / F1.

The chunk rules are conlleval's (the CoNLL-2000/2003 evaluation script, which seqeval's default
mode follows): a chunk starts at ``B-``/``S-``, or at an ``I-``/``E-`` that follows ``O`` or a
chunk of another type; it ends before a tag that starts a new chunk, at ``E-``/``S-``, or at ``O``.
A chunk is ``(type, first word, last word)``; a predicted chunk counts when type and span match.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

_TAG = re.compile(r"^([BIESLU])[-_](.+)$")
OUTSIDE = "O"


def _split(tag: str) -> tuple[str, str]:
    if tag == OUTSIDE:
        return OUTSIDE, ""
    m = _TAG.match(tag)
    if not m:
        return OUTSIDE, ""
    prefix = {"L": "E", "U": "S"}.get(m.group(1), m.group(1))  # BILOU spelling of BIOES
    return prefix, m.group(2)


def is_chunk_tagset(labels: Iterable[str]) -> bool:
    """Whether a model's labels are a BIO/BIOES (or BILOU) tag set: every label is ``O`` or
    ``<B|I|E|S|L|U>-<type>``, and at least one begins a chunk."""
    labels = list(labels)
    if not labels or not all(tag == OUTSIDE or _TAG.match(tag) for tag in labels):
        return False
    return any(_split(tag)[0] in ("B", "S") for tag in labels)


def chunks(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    out: set[tuple[str, int, int]] = set()
    start, kind = None, ""
    prev_prefix, prev_kind = OUTSIDE, ""
    for i, tag in enumerate(list(tags) + [OUTSIDE]):
        prefix, typ = _split(tag)
        # conlleval's endOfChunk(prev, cur)
        ends = start is not None and (
            prev_prefix in ("E", "S") or prefix in ("B", "S", OUTSIDE) or (prefix in ("I", "E") and typ != prev_kind)
        )
        if ends:
            out.add((kind, start, i - 1))  # type: ignore[arg-type]  # ends: start is set
            start = None
        # conlleval's startOfChunk(prev, cur)
        starts = prefix in ("B", "S") or (
            prefix in ("I", "E") and (prev_prefix in ("E", "S", OUTSIDE) or typ != prev_kind)
        )
        if starts and prefix != OUTSIDE:
            start, kind = i, typ
        prev_prefix, prev_kind = prefix, typ
    return out


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro-averaged entity precision, recall and F1 over sentences (0 when there is nothing)."""
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, predicted):
        gc, pc = chunks(g), chunks(p)
        tp += len(gc & pc)
        n_gold += len(gc)
        n_pred += len(pc)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
