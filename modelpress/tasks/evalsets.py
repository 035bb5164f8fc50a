"""Evaluation sets: texts (+ optional labels), sentence pairs with gold similarity scores, or (read
by ``tasks.tagged``) sentences of words with gold tags. Each task reads the formats it declares.

Formats (``validate.eval_format``):
  * ``text``  .jsonl / .csv / .tsv / .txt with a text field and an optional label field
  * ``pairs`` .jsonl / .csv / .tsv with ``sentence1``, ``sentence2``, ``score``
  * ``stsb``  the original STS Benchmark files (tab-separated, no header, score in column 5,
              sentences in columns 6-7, some rows with extra trailing fields)
  * ``auto``  stsb if the first line looks like it, else pairs if the fields exist, else text
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from modelpress.calibration_data.loaders import read_records, text_of
from modelpress.errors import BadInputError
from modelpress.tasks.records import EvalSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextSet(EvalSet):
    """The record of the text formats (feature-extraction, text-classification): texts, with a gold
    class per text or gold-scored pairs of them."""

    texts: tuple[str, ...] = ()  # unique texts, in first-seen order
    labels: tuple[int, ...] | None = None  # gold class per text (classification)
    pairs: tuple[tuple[int, int, float], ...] | None = None  # (text index, text index, gold score)

    @property
    def examples(self) -> tuple[str, ...]:
        return self.texts

    @property
    def has_gold(self) -> bool:
        return self.labels is not None or self.pairs is not None

    def counts(self) -> dict:
        return {
            "num_texts": len(self.texts),
            "num_pairs": len(self.pairs or ()),
            "num_words": 0,
            "has_labels": self.labels is not None,
        }


def _looks_like_stsb(path: Path) -> bool:
    if path.is_dir():
        return False
    with path.open(encoding="utf-8", errors="replace") as fh:
        first = fh.readline().rstrip("\n").split("\t")
    if len(first) < 7:
        return False
    try:
        float(first[4])
    except ValueError:
        return False
    return True


def _from_pairs(rows: list[tuple[str, str, float]], source: str, fmt: str) -> TextSet:
    index: dict[str, int] = {}
    pairs = []
    for s1, s2, score in rows:
        i = index.setdefault(s1, len(index))
        j = index.setdefault(s2, len(index))
        pairs.append((i, j, score))
    _check_pairs(rows, source)
    return TextSet(tuple(index), pairs=tuple(pairs), source=source, format=fmt)


def _check_pairs(pairs: list[tuple[str, str, float]], source: str) -> None:
    if not pairs:
        raise BadInputError(f"{source}: no sentence pairs")
    if len(pairs) >= 2 and len({s for _, _, s in pairs}) == 1:
        raise BadInputError(
            f"{source}: spearman cannot be computed: the {len(pairs)} gold score(s) of the eval set "
            "are all equal; give varied scores"
        )


def _read_stsb(path: Path) -> TextSet:
    return _from_pairs(stsb_rows(path), str(path), "stsb")


def stsb_rows(path: Path, *, num_samples: int = 0) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, gold score) of an STS Benchmark file, the first ``num_samples`` (0: all),
    checked as every pairs set is (some pairs; varied scores)."""
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.rstrip("\n").split("\t")[:7]
            if len(fields) < 7:
                raise BadInputError(f"{path}:{lineno}: expected 7 tab-separated STS-B fields")
            rows.append(
                (
                    _text(fields[5], f"{path}:{lineno}", "sentence1"),
                    _text(fields[6], f"{path}:{lineno}", "sentence2"),
                    _score(fields[4], f"{path}:{lineno}"),
                )
            )
    rows = rows[:num_samples] if num_samples else rows
    _check_pairs(rows, str(path))
    return rows


def _score(value, where: str) -> float:
    """A gold similarity score: a finite number (NaN would make every rank statistic NaN)."""
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise BadInputError(f"{where}: score {value!r} is not a number") from None
    if not math.isfinite(score):
        raise BadInputError(f"{where}: score {value!r} is not a finite number")
    return score


def _text(value, where: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadInputError(f"{where}: '{field}' is {value!r}, not a text")
    return value.strip()


def _label(value, where: str, field: str, num_labels: int | None) -> int:
    """A class id: an integer (or its digits), in 0..num_labels-1 when the model's label count is known."""
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise BadInputError(f"{where}: label {value!r} is not an integer class id")
    try:
        label = int(value) if not isinstance(value, str) else int(value.strip())
    except (TypeError, ValueError):
        raise BadInputError(f"{where}: label {value!r} is not an integer class id") from None
    if label < 0 or (num_labels is not None and label >= num_labels):
        known = f"0..{num_labels - 1}" if num_labels is not None else ">= 0"
        raise BadInputError(f"{where}: label {value!r} is not a class of the model ({known}, field '{field}')")
    return label


def load_eval_set(
    path: str | Path,
    *,
    fmt: str = "auto",
    text_field: str = "text",
    label_field: str = "label",
    num_samples: int = 0,
    formats: tuple[str, ...] = ("text", "pairs", "stsb"),
    num_labels: int | None = None,
) -> TextSet:
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: evaluation data not found")
    if fmt != "auto" and fmt not in formats:
        raise BadInputError(f"validate.eval_format: this task reads {', '.join(formats)}, not {fmt!r}")
    es = _load(path, fmt=fmt, text_field=text_field, label_field=label_field, formats=formats, num_labels=num_labels)
    if es.format not in formats:
        raise BadInputError(f"{path}: read as {es.format}, which this task cannot use ({', '.join(formats)})")
    return _truncate(es, num_samples) if num_samples else es


def _load(
    path: Path, *, fmt: str, text_field: str, label_field: str, formats: tuple[str, ...], num_labels: int | None
) -> TextSet:
    if fmt == "stsb" or (fmt == "auto" and "stsb" in formats and _looks_like_stsb(path)):
        return _read_stsb(path)
    else:
        records = read_records(path)
        keys = set(records[0])
        # auto: pairs when the first record names a first sentence (a missing second one is then named)
        if fmt == "pairs" or (fmt == "auto" and "pairs" in formats and "sentence1" in keys):
            rows = []
            for i, r in enumerate(records):
                missing = [k for k in ("sentence1", "sentence2", "score") if k not in r]
                if missing:
                    raise BadInputError(f"{records.where(i)}: a pair needs the fields {', '.join(missing)}")
                rows.append(
                    (
                        _text(r["sentence1"], records.where(i), "sentence1"),
                        _text(r["sentence2"], records.where(i), "sentence2"),
                        _score(r["score"], records.where(i)),
                    )
                )
            return _from_pairs(rows, str(path), "pairs")
        else:
            texts, labels = [], []
            has_labels = label_field in keys
            skipped = 0
            for i, r in enumerate(records):
                t = text_of(records, i, text_field)
                if not t:
                    skipped += 1  # an empty text is skipped (and counted); anything else wrong is an error
                    continue
                texts.append(t)
                if has_labels:
                    if label_field not in r:
                        raise BadInputError(f"{records.where(i)}: no '{label_field}' (the first record has one)")
                    labels.append(_label(r[label_field], records.where(i), label_field, num_labels))
            if not texts:
                raise BadInputError(f"{path}: no texts in field '{text_field}'")
            if skipped:
                log.warning("%s: skipped %d empty text(s) of %d", path, skipped, len(records))
            return TextSet(
                tuple(texts),
                labels=tuple(labels) if has_labels else None,
                source=str(path),
                format="text",
                skipped=skipped,
            )


def _truncate(es: TextSet, n: int) -> TextSet:
    if es.pairs is not None:
        return _from_pairs([(es.texts[i], es.texts[j], s) for i, j, s in es.pairs[:n]], es.source, es.format)
    return TextSet(es.texts[:n], labels=es.labels[:n] if es.labels else None, source=es.source, format=es.format)
