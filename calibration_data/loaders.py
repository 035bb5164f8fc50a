"""Read text corpora from disk: the raw material for calibration, distillation and evaluation.

Supported sources (chosen by suffix, or a folder):
  * ``.txt``   one text per line (blank lines skipped)
  * ``.jsonl`` one JSON object per line; ``text_field`` names the text (default ``text``)
  * ``.csv`` / ``.tsv`` with a header row; ``text_field`` names the column (default ``text``)
  * a folder written by ``datasets.Dataset.save_to_disk`` (or a DatasetDict: the ``train``
    split, else the first); needs the optional ``datasets`` package
Every loader returns plain records (dicts of str→value); callers pick the fields they need.
Empty or unreadable input raises :class:`BadInputError` naming the file.
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any, Iterable

from modelpress.errors import BadInputError

TEXT_SUFFIXES = (".txt", ".jsonl", ".csv", ".tsv")


def _read_txt(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [{"text": line.strip()} for line in fh if line.strip()]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise BadInputError(f"{path}:{lineno}: expected a JSON object per line")
            records.append(obj)
    return records


def _read_delimited(path: Path, delimiter: str) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8", newline="") as fh:
        # QUOTE_NONE for TSV: GLUE-style files carry bare quote characters in the text.
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        reader = csv.DictReader(fh, delimiter=delimiter, quoting=quoting)
        if not reader.fieldnames:
            raise BadInputError(f"{path}: no header row")
        return [dict(row) for row in reader]


def _read_hf_dataset(path: Path) -> list[dict[str, Any]]:
    try:
        import datasets  # optional dependency
    except ImportError:
        raise BadInputError(
            f"{path}: reading a Hugging Face datasets folder needs the 'datasets' package "
            "(pip install 'modelpress[datasets]')"
        ) from None
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise BadInputError(f"{path}: not a datasets folder saved with save_to_disk ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else next(iter(ds))
        ds = ds[split]
    return [dict(row) for row in ds]


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """All records of a corpus file or datasets folder, in file order."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            records = _read_hf_dataset(path)
        elif path.suffix == ".txt":
            records = _read_txt(path)
        elif path.suffix == ".jsonl":
            records = _read_jsonl(path)
        elif path.suffix == ".csv":
            records = _read_delimited(path, ",")
        elif path.suffix == ".tsv":
            records = _read_delimited(path, "\t")
        else:
            raise BadInputError(
                f"{path}: unsupported data file; expected one of {', '.join(TEXT_SUFFIXES)} "
                "or a datasets folder"
            )
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read ({exc.strerror})") from None
    if not records:
        raise BadInputError(f"{path}: contains no records")
    return records


def load_texts(path: str | Path, *, text_field: str = "text") -> list[str]:
    """The non-empty texts of a corpus; ``text_field`` names the field/column for structured files."""
    records = read_records(path)
    if text_field not in records[0]:
        raise BadInputError(
            f"{path}: no field '{text_field}' (fields: {', '.join(map(str, records[0]))})"
        )
    texts = [str(r[text_field]).strip() for r in records if r.get(text_field) is not None]
    texts = [t for t in texts if t]
    if not texts:
        raise BadInputError(f"{path}: field '{text_field}' holds no text")
    return texts


def sample(items: Iterable[Any], n: int | None, *, seed: int = 0) -> list[Any]:
    """A deterministic sample of ``n`` items (all of them, in order, when ``n`` is None or large)."""
    items = list(items)
    if n is None or n >= len(items):
        return items
    rng = random.Random(seed)
    idx = sorted(rng.sample(range(len(items)), n))
    return [items[i] for i in idx]
