"""Evaluation sets: texts (+ optional labels), sentence pairs with gold similarity scores, or (read
by ``validate.tagged``) sentences of words with gold tags. Each task reads the formats it declares.

Formats (``validate.eval_format``):
  * ``text``  .jsonl / .csv / .tsv / .txt with a text field and an optional label field
  * ``pairs`` .jsonl / .csv / .tsv with ``sentence1``, ``sentence2``, ``score``
  * ``stsb``  the original STS Benchmark files (tab-separated, no header, score in column 5,
              sentences in columns 6-7, some rows with extra trailing fields)
  * ``auto``  stsb if the first line looks like it, else pairs if the fields exist, else text
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelpress.calibration_data.loaders import read_records
from modelpress.errors import BadInputError


@dataclass(frozen=True)
class EvalSet:
    texts: tuple[str, ...] = ()                     # unique texts, in first-seen order
    labels: tuple[int, ...] | None = None           # gold class per text (classification)
    pairs: tuple[tuple[int, int, float], ...] | None = None  # (text index, text index, gold score)
    words: tuple[tuple[str, ...], ...] | None = None  # sentences as words (token classification)
    tags: tuple[tuple[int, ...], ...] | None = None   # gold tag id per word
    label_names: tuple[str, ...] = ()               # tag names by id (entity chunks need them)
    source: str = ""
    format: str = "text"

    @property
    def examples(self) -> tuple:
        """What the model is run on: the word lists of a tagged set, else the texts."""
        return self.words if self.words is not None else self.texts

    @property
    def has_gold(self) -> bool:
        return self.labels is not None or self.pairs is not None or self.tags is not None

    def describe(self) -> dict:
        return {"source": self.source, "format": self.format, "num_examples": len(self.examples),
                "num_texts": len(self.texts), "num_pairs": len(self.pairs or ()),
                "num_words": sum(map(len, self.words)) if self.words is not None else 0,
                "has_labels": self.labels is not None or self.tags is not None}


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


def _from_pairs(rows: list[tuple[str, str, float]], source: str, fmt: str) -> EvalSet:
    index: dict[str, int] = {}
    pairs = []
    for s1, s2, score in rows:
        i = index.setdefault(s1, len(index))
        j = index.setdefault(s2, len(index))
        pairs.append((i, j, score))
    if not pairs:
        raise BadInputError(f"{source}: no sentence pairs")
    return EvalSet(tuple(index), pairs=tuple(pairs), source=source, format=fmt)


def _read_stsb(path: Path) -> EvalSet:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.rstrip("\n").split("\t")[:7]
            if len(fields) < 7:
                raise BadInputError(f"{path}:{lineno}: expected 7 tab-separated STS-B fields")
            try:
                rows.append((fields[5], fields[6], float(fields[4])))
            except ValueError:
                raise BadInputError(f"{path}:{lineno}: score {fields[4]!r} is not a number") from None
    return _from_pairs(rows, str(path), "stsb")


def load_eval_set(path: str | Path, *, fmt: str = "auto", text_field: str = "text",
                  label_field: str = "label", num_samples: int = 0,
                  formats: tuple[str, ...] = ("text", "pairs", "stsb")) -> EvalSet:
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: evaluation data not found")
    if fmt != "auto" and fmt not in formats:
        raise BadInputError(f"validate.eval_format: this task reads {', '.join(formats)}, not {fmt!r}")
    es = _load(path, fmt=fmt, text_field=text_field, label_field=label_field, formats=formats)
    if es.format not in formats:
        raise BadInputError(f"{path}: read as {es.format}, which this task cannot use ({', '.join(formats)})")
    return _truncate(es, num_samples) if num_samples else es


def _load(path: Path, *, fmt: str, text_field: str, label_field: str, formats: tuple[str, ...]) -> EvalSet:
    if fmt == "stsb" or (fmt == "auto" and "stsb" in formats and _looks_like_stsb(path)):
        return _read_stsb(path)
    else:
        records = read_records(path)
        keys = set(records[0])
        if fmt == "pairs" or (fmt == "auto" and "pairs" in formats and {"sentence1", "sentence2", "score"} <= keys):
            missing = {"sentence1", "sentence2", "score"} - keys
            if missing:
                raise BadInputError(f"{path}: pairs format needs fields {sorted(missing)}")
            try:
                rows = [(str(r["sentence1"]), str(r["sentence2"]), float(r["score"])) for r in records]
            except (TypeError, ValueError):
                raise BadInputError(f"{path}: a 'score' value is not a number") from None
            return _from_pairs(rows, str(path), "pairs")
        else:
            if text_field not in keys:
                raise BadInputError(f"{path}: no field '{text_field}' (fields: {', '.join(sorted(keys))})")
            texts, labels = [], []
            has_labels = label_field in keys
            for r in records:
                t = str(r.get(text_field) or "").strip()
                if not t:
                    continue
                texts.append(t)
                if has_labels:
                    try:
                        labels.append(int(r[label_field]))
                    except (TypeError, ValueError):
                        raise BadInputError(f"{path}: label {r[label_field]!r} is not an integer class id") from None
            if not texts:
                raise BadInputError(f"{path}: no texts in field '{text_field}'")
            return EvalSet(tuple(texts), labels=tuple(labels) if has_labels else None, source=str(path),
                           format="text")


def _truncate(es: EvalSet, n: int) -> EvalSet:
    if es.pairs is not None:
        return _from_pairs([(es.texts[i], es.texts[j], s) for i, j, s in es.pairs[:n]], es.source, es.format)
    return EvalSet(es.texts[:n], labels=es.labels[:n] if es.labels else None, source=es.source, format=es.format)
