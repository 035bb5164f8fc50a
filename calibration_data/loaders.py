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
import logging
import random
from pathlib import Path
from typing import Any, Iterable

from modelpress.errors import BadInputError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".jsonl", ".csv", ".tsv")


class Records(list):
    """The records of a corpus, in file order, with where each came from (``where(i)``:
    ``file:line`` for text files, ``file: row N`` for datasets folders) for error messages."""

    def __init__(self, path: Path, rows: list[tuple[int, dict[str, Any]]], *, unit: str = "line") -> None:
        super().__init__(r for _, r in rows)
        self.path = path
        self.positions = [n for n, _ in rows]
        self.unit = unit

    def where(self, i: int) -> str:
        sep = ":" if self.unit == "line" else f": {self.unit} "
        return f"{self.path}{sep}{self.positions[i]}"


def _read_txt(path: Path) -> list[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as fh:
        return [(n, {"text": line.strip()}) for n, line in enumerate(fh, 1) if line.strip()]


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
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
            records.append((lineno, obj))
    return records


def _read_delimited(path: Path, delimiter: str) -> list[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8", newline="") as fh:
        # QUOTE_NONE for TSV: GLUE-style files carry bare quote characters in the text.
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        reader = csv.DictReader(fh, delimiter=delimiter, quoting=quoting)
        if not reader.fieldnames:
            raise BadInputError(f"{path}: no header row")
        rows = []
        for row in reader:
            if None in row:  # more fields than the header names
                raise BadInputError(
                    f"{path}:{reader.line_num}: {len(reader.fieldnames) + len(row[None])} fields, "
                    f"the header names {len(reader.fieldnames)}"
                )
            rows.append((reader.line_num, dict(row)))
        return rows


def open_dataset(path: Path):
    """The ``datasets.save_to_disk`` folder at ``path`` (of a DatasetDict: the ``train`` split, else
    the first), rows not yet decoded."""
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
    return ds


def _read_hf_dataset(path: Path) -> list[tuple[int, dict[str, Any]]]:
    return [(i, dict(row)) for i, row in enumerate(open_dataset(path), 1)]


def read_records(path: str | Path) -> Records:
    """All records of a corpus file or datasets folder, in file order."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: no such file or folder")
    if not path.is_dir() and not path.is_file():
        raise BadInputError(f"{path}: not a regular file or folder (a device, a pipe?)")
    unit = "line"
    try:
        if path.is_dir():
            rows, unit = _read_hf_dataset(path), "row"
        elif path.suffix == ".txt":
            rows = _read_txt(path)
        elif path.suffix == ".jsonl":
            rows = _read_jsonl(path)
        elif path.suffix == ".csv":
            rows = _read_delimited(path, ",")
        elif path.suffix == ".tsv":
            rows = _read_delimited(path, "\t")
        else:
            raise BadInputError(
                f"{path}: unsupported data file; expected one of {', '.join(TEXT_SUFFIXES)} or a datasets folder"
            )
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read ({exc.strerror})") from None
    if not rows:
        raise BadInputError(f"{path}: contains no records")
    return Records(path, rows, unit=unit)


def text_of(records: Records, i: int, field: str) -> str:
    """Record ``i``'s text in ``field``, stripped; a missing field, null or non-string is an error
    naming file and line (never the text "None")."""
    record = records[i]
    if field not in record:
        raise BadInputError(f"{records.where(i)}: no field '{field}' (fields: {', '.join(map(str, record))})")
    value = record[field]
    if not isinstance(value, str):
        raise BadInputError(f"{records.where(i)}: '{field}' is {type(value).__name__} {value!r}, not text")
    return value.strip()


def load_texts(path: str | Path, *, text_field: str = "text") -> list[str]:
    """The texts of a corpus, every record checked: a record without ``text_field``, or whose value
    is not a string, is an error naming file and line; empty texts are skipped and counted in the log."""
    records = read_records(path)
    texts = [text_of(records, i, text_field) for i in range(len(records))]
    kept = [t for t in texts if t]
    if not kept:
        raise BadInputError(f"{path}: field '{text_field}' holds no text")
    if len(kept) < len(texts):
        log.warning("%s: skipped %d empty text(s) of %d", path, len(texts) - len(kept), len(texts))
    return kept


def sample(items: Iterable[Any], n: int | None, *, seed: int = 0) -> list[Any]:
    """A deterministic sample of ``n`` items (all of them, in order, when ``n`` is None or large)."""
    items = list(items)
    if n is None or n >= len(items):
        return items
    rng = random.Random(seed)
    idx = sorted(rng.sample(range(len(items)), n))
    return [items[i] for i in idx]
