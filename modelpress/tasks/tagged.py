"""Eval sets of tagged sentences (token classification): CoNLL-U, CoNLL-2003 style, jsonl.

Formats (``validate.eval_format``):
  * ``conllu``  Universal Dependencies files: 10 tab-separated columns, ``#`` comment lines, a
                blank line between sentences; the word is column 2, the tag column 4 (UPOS).
                Multi-word token lines (ID ``3-4``) and empty nodes (ID ``8.1``) are skipped.
  * ``conll``   one word per line, the word first and the tag last (space or tab separated), a
                blank line between sentences, ``-DOCSTART-`` lines skipped (CoNLL-2003).
  * ``jsonl``   one sentence per line: ``{"tokens": [...], "tags": [...]}`` (tags as label names,
                or as integer ids of the model's labels).
  * ``auto``    conllu for ``.conllu``, jsonl for ``.jsonl``, else conll.
Every gold tag must be one of the model's labels; a sentence with words and tags of different
lengths, or an unknown tag, is an error naming the file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from modelpress.errors import BadInputError
from modelpress.tasks import EvalSet

TAGGED_FORMATS = ("conllu", "conll", "jsonl")


@dataclass(frozen=True)
class TaggedEvalSet(EvalSet):
    """token-classification's record: sentences as words, with a gold tag id per word, and how the
    model's tokenizer meets its words (counted by ``modelpress.modalities.text.TextEncoder.word_coverage``;
    None until a tokenizer was given)."""

    words: tuple[tuple[str, ...], ...] = ()  # sentences as words
    tags: tuple[tuple[int, ...], ...] | None = None  # gold tag id per word
    label_names: tuple[str, ...] = ()  # tag names by id (entity chunks need them)
    words_without_tokens: int | None = None  # words read at a neighbour's position (no token of their own)
    windowed_sentences: int | None = None  # sentences longer than max_length, read in overlapping windows

    @property
    def examples(self) -> tuple[tuple[str, ...], ...]:
        return self.words

    @property
    def has_gold(self) -> bool:
        return self.tags is not None

    def counts(self) -> dict:
        extra = {"words_without_tokens": self.words_without_tokens, "windowed_sentences": self.windowed_sentences}
        return {
            "num_texts": 0,
            "num_pairs": 0,
            "num_words": sum(map(len, self.words)),
            "has_labels": self.tags is not None,
            **{k: v for k, v in extra.items() if v is not None},
        }


def _conllu(path: Path):
    words: list[str] = []
    tags: list[str] = []
    start = None
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if not line.strip():
                if words:
                    yield start, words, tags
                words, tags, start = [], [], None
                continue
            if line.startswith("#"):
                continue
            cols = line.split("\t")
            if len(cols) != 10:
                raise BadInputError(f"{path}:{lineno}: expected 10 tab-separated CoNLL-U columns, got {len(cols)}")
            if "-" in cols[0] or "." in cols[0]:
                continue  # multi-word token range / empty node: not a word of the sentence
            start = start or lineno
            words.append(cols[1])
            tags.append(cols[3])
    if words:
        yield start, words, tags


def _conll(path: Path):
    words: list[str] = []
    tags: list[str] = []
    start = None
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            cols = line.split()
            if not cols or cols[0] == "-DOCSTART-":
                if words:
                    yield start, words, tags
                words, tags, start = [], [], None
                continue
            if len(cols) < 2:
                raise BadInputError(f"{path}:{lineno}: expected a word and a tag, got {line.strip()!r}")
            start = start or lineno
            words.append(cols[0])
            tags.append(cols[-1])
    if words:
        yield start, words, tags


def _jsonl(path: Path, tokens_field: str, tags_field: str):
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            words, tags = row.get(tokens_field) if isinstance(row, dict) else None, None
            if isinstance(row, dict):
                tags = row.get(tags_field)
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise BadInputError(f"{path}:{lineno}: '{tokens_field}' must be a list of strings")
            if tags is not None and not isinstance(tags, list):
                raise BadInputError(f"{path}:{lineno}: '{tags_field}' must be a list")
            if words:
                yield lineno, words, tags


def detect_format(path: Path) -> str:
    return {".conllu": "conllu", ".jsonl": "jsonl"}.get(path.suffix, "conll")


def load_tagged(
    path: str | Path,
    *,
    fmt: str = "auto",
    label2id: Mapping[str, int],
    num_samples: int = 0,
    tokens_field: str = "tokens",
    tags_field: str = "tags",
):
    """An EvalSet of sentences (``words``) and gold tag ids (``tags``, None when untagged)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: evaluation data not found")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in TAGGED_FORMATS:
        raise BadInputError(
            f"validate.eval_format: token-classification reads {', '.join(TAGGED_FORMATS)}, not {fmt!r}"
        )
    rows = {
        "conllu": lambda: _conllu(path),
        "conll": lambda: _conll(path),
        "jsonl": lambda: _jsonl(path, tokens_field, tags_field),
    }[fmt]()
    names = {int(i): str(n) for n, i in label2id.items()}
    sentences, tag_ids = [], []
    tagged = None
    try:
        for lineno, words, tags in rows:
            has_tags = tags is not None
            if tagged is None:
                tagged = has_tags
            elif tagged != has_tags:
                raise BadInputError(f"{path}:{lineno}: some sentences have '{tags_field}' and some do not")
            if has_tags:
                if len(tags) != len(words):
                    raise BadInputError(f"{path}:{lineno}: {len(words)} words but {len(tags)} tags")
                ids = []
                for tag in tags:
                    if isinstance(tag, int) and not isinstance(tag, bool) and tag in names:
                        ids.append(tag)
                    elif isinstance(tag, str) and tag in label2id:
                        ids.append(int(label2id[tag]))
                    else:
                        known = ", ".join(names[i] for i in sorted(names))
                        raise BadInputError(f"{path}:{lineno}: tag {tag!r} is not a label of the model ({known})")
                tag_ids.append(tuple(ids))
            sentences.append(tuple(words))
            if num_samples and len(sentences) >= num_samples:
                break
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not sentences:
        raise BadInputError(f"{path}: no sentences")
    label_names = tuple(names[i] for i in sorted(names)) if names else ()
    return TaggedEvalSet(
        words=tuple(sentences),
        tags=tuple(tag_ids) if tagged else None,
        label_names=label_names,
        source=str(path),
        format=fmt,
    )
