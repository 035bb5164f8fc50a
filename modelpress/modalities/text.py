"""The text modality: a Hugging Face tokenizer turns strings (or sentences pre-split into words)
into ``input_ids`` / ``attention_mask`` / ``token_type_ids``, all ``[batch, sequence]`` int64.

Words map to tokens through character offsets (fast tokenizers), not ``is_split_into_words``:
byte-level BPE tokenizers (RoBERTa, GPT-2) then need no ``add_prefix_space``, and a word's first
sub-token is the first token whose last character lies inside it. Every word gets a position
(:class:`WordBatch`): a word the tokenizer turns into no token at all (a zero-width space, a BOM,
NUL, a soft hyphen, an empty string) is read at the next word's first sub-token (the previous
word's when none follows), and a sentence longer than ``max_length`` is read in windows that
overlap by half their content, like the ``stride`` of transformers' token-classification
pipeline; each word is read in the window where its first sub-token has the most context on both
sides (the "max context" rule of BERT's doc stride for SQuAD).

Pairs (:class:`TextPair`, a query and a passage) are encoded together as one sequence, as a
cross-encoder reads them (``[CLS] query [SEP] passage [SEP]``, segment ids 0 then 1 for BERT),
truncated longest-first like sentence-transformers' ``CrossEncoder``. The ``text-pairs`` modality
(:data:`TEXT_PAIRS`) is the text modality whose raw examples are pairs: calibration and
distillation read them with :func:`load_pairs`.
"""

from __future__ import annotations

import bisect
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from modelpress.calibration_data.loaders import read_records, sample, text_of
from modelpress.errors import BadInputError
from modelpress.modalities import MODALITIES, Batch, Encoder, Modality
from modelpress.calibration_data.loaders import load_texts
from modelpress.tokenization import DeployTokenizer

log = logging.getLogger(__name__)

#: the order of the graph's inputs (a model takes a prefix-compatible subset)
CANONICAL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
EXAMPLE_TEXTS = ("The quick brown fox jumps over the lazy dog.", "Export me, please.")
PARITY_TEXTS = (
    "A much longer sentence than the export example, so the sequence length differs from it.",
    "Short one.",
    "Batch size three also differs from the two-text example batch used for tracing.",
)
EXAMPLE_SEQ, PARITY_SEQ = 16, 23
#: the export example and parity batch of a pair model: the same texts, paired both ways
EXAMPLE_PAIRS = ((EXAMPLE_TEXTS[0], EXAMPLE_TEXTS[1]), (EXAMPLE_TEXTS[1], EXAMPLE_TEXTS[0]))
PARITY_PAIRS = (
    (PARITY_TEXTS[1], PARITY_TEXTS[0]),
    (PARITY_TEXTS[0], PARITY_TEXTS[2]),
    (PARITY_TEXTS[2], PARITY_TEXTS[1]),
)
#: families whose position ids start after the padding index (RoBERTa: 514 embeddings, 512 positions)
OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "data2vec-text"})


class TextPair(NamedTuple):
    """One cross-encoder input: a query and a passage (or two sentences), read together."""

    first: str
    second: str


def _is_pairs(examples: Sequence[Any]) -> bool:
    return bool(examples) and isinstance(examples[0], TextPair)


def split_pairs(pairs: Sequence[TextPair]) -> tuple[list[str], list[str]]:
    return [p.first for p in pairs], [p.second for p in pairs]


@dataclass(frozen=True)
class WordBatch(Batch):
    """A batch of word lists: ``first_tokens[i][w]`` is the position word ``w`` of example ``i`` is
    read at, in feed row ``word_rows[i][w]`` (a long sentence spans several rows: its windows)."""

    first_tokens: tuple[np.ndarray, ...] = ()  # per example: token index of each word
    word_rows: tuple[np.ndarray, ...] = ()
    #: per example, per word: True where the word has no token of its own (read at a neighbour's)
    tokenless: tuple[np.ndarray, ...] = ()
    #: per example: the feed rows (windows) it was read in
    windows: tuple[int, ...] = ()


class TextEncoder(Encoder):
    """``window_words``: word lists longer than ``max_length`` are read in overlapping windows, so
    that every word gets a position (validation and the bundle); without it they are truncated and
    only the words the truncation reached get one (distillation labels the tokens of its own rows)."""

    def __init__(
        self, tokenizer: Any, *, input_names: Sequence[str], max_length: int, window_words: bool = False
    ) -> None:
        self.tokenizer = tokenizer
        self.input_names = tuple(input_names)
        self.max_length = max_length
        self.window_words = window_words

    def _texts(self, examples: Sequence[Any]) -> tuple[list[str], list[list[int]] | None]:
        """The strings to tokenize and, for word lists, each word's first character."""
        if not examples or isinstance(examples[0], str):
            return list(examples), None
        texts, starts = [], []
        for words in examples:
            offsets, pos = [], 0
            for w in words:
                offsets.append(pos)
                pos += len(w) + 1
            texts.append(" ".join(words))
            starts.append(offsets)
        return texts, starts

    def overlap(self) -> int:
        """Tokens two consecutive windows share: half of what a window holds besides the special
        tokens, so that every word but those at a sentence's ends is read with at least a quarter
        window of context on each side."""
        content = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=False)
        if content < 1:
            raise BadInputError(
                f"validate.max_length: {self.max_length} leaves no position for a word beside the "
                f"tokenizer's {self.max_length - content} special tokens"
            )
        return content // 2

    def encode(self, examples: Sequence[Any], *, pad_to: int | None = None) -> Batch:
        if _is_pairs(examples):
            # truncation=True is longest-first: the longer text of a pair loses tokens first
            enc = self.tokenizer(
                *split_pairs(examples),
                truncation=True,
                return_tensors="np",
                max_length=pad_to or self.max_length,
                padding="max_length" if pad_to else "longest",
            )
            return Batch({k: np.ascontiguousarray(enc[k], dtype=np.int64) for k in self.input_names if k in enc})
        texts, starts = self._texts(examples)
        if starts is not None:
            return self._encode_words(texts, starts, [len(words) for words in examples], pad_to=pad_to)
        enc = self.tokenizer(
            texts,
            truncation=True,
            return_tensors="np",
            max_length=pad_to or self.max_length,
            padding="max_length" if pad_to else "longest",
        )
        return Batch({k: np.ascontiguousarray(enc[k], dtype=np.int64) for k in self.input_names if k in enc})

    def _encode_words(
        self, texts: list[str], starts: list[list[int]], counts: list[int], *, pad_to: int | None
    ) -> WordBatch:
        # a batch padded to a length (latency timing) keeps its shape: truncated, never windowed
        windowed = self.window_words and pad_to is None
        enc = self.tokenizer(
            texts,
            truncation=True,
            return_tensors="np",
            max_length=pad_to or self.max_length,
            padding="max_length" if pad_to else "longest",
            return_offsets_mapping=True,
            **(dict(return_overflowing_tokens=True, stride=self.overlap()) if windowed else {}),
        )
        owner = np.asarray(enc["overflow_to_sample_mapping"]) if windowed else np.arange(len(texts))
        if enc["input_ids"].shape[1] == 0:  # empty texts and no special tokens: give the model one position
            enc = self.tokenizer(
                texts, return_tensors="np", max_length=1, padding="max_length", return_offsets_mapping=True
            )
            owner = np.arange(len(texts))
        feed = {k: np.ascontiguousarray(enc[k], dtype=np.int64) for k in self.input_names if k in enc}
        rows, firsts, tokenless, windows = [], [], [], []
        for i, (word_starts, count) in enumerate(zip(starts, counts)):
            mine = np.flatnonzero(owner == i)
            window, first, missing = _word_positions(
                [enc["offset_mapping"][r] for r in mine],
                [enc["attention_mask"][r] for r in mine],
                word_starts,
                count,
                every_word=windowed,
            )
            rows.append(mine[window])
            firsts.append(first)
            tokenless.append(missing)
            windows.append(len(mine))
        return WordBatch(
            feed, first_tokens=tuple(firsts), word_rows=tuple(rows), tokenless=tuple(tokenless), windows=tuple(windows)
        )

    def word_coverage(self, sentences: Sequence[Sequence[str]], *, batch_size: int = 64) -> dict[str, int]:
        """How the words of ``sentences`` meet the tokenizer, counted by the encoding itself:
        ``words_without_tokens`` (read at a neighbour's position) and ``windowed_sentences``
        (longer than ``max_length``: read in more than one window)."""
        without = windowed = 0
        for start in range(0, len(sentences), batch_size):
            batch = self.encode([list(s) for s in sentences[start : start + batch_size]])
            without += sum(int(missing.sum()) for missing in batch.tokenless)
            windowed += sum(1 for n in batch.windows if n > 1)
        return {"words_without_tokens": without, "windowed_sentences": windowed}

    def lengths(self, examples: Sequence[Any]) -> list[int]:
        texts = split_pairs(examples) if _is_pairs(examples) else (self._texts(examples)[0],)
        return [len(ids) for ids in self.tokenizer(*texts, truncation=True, max_length=self.max_length)["input_ids"]]


def _word_positions(
    offsets: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    word_starts: Sequence[int],
    count: int,
    *,
    every_word: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sentence read in ``len(offsets)`` windows: per word, the window and position of its first
    sub-token, and whether it has no token of its own. ``every_word``: all ``count`` words get one;
    else (truncation) the words up to the last one the truncation reached."""
    first: dict[int, tuple[int, int]] = {}  # word -> its first sub-token, as (end, start) offsets
    best: dict[tuple[int, int], tuple[int, int, int]] = {}  # token -> (context, -window, position)
    for k, (offs, mask) in enumerate(zip(offsets, masks)):
        # special tokens and padding have empty offsets; context is counted in the window's real tokens
        real = [t for t, (s, e) in enumerate(offs) if e > s and mask[t]]
        for j, t in enumerate(real):
            token = (int(offs[t][1]), int(offs[t][0]))
            word = bisect.bisect_right(word_starts, token[0] - 1) - 1
            if word not in first or token < first[word]:
                first[word] = token
            # a token two windows share is read where it has more context (the earlier window on a tie)
            best[token] = max(best.get(token, (-1, 0, 0)), (min(j, len(real) - 1 - j), -k, t))
    n = count if every_word else (max(first) + 1 if first else 0)
    own = [(-best[first[w]][1], best[first[w]][2]) if w in first else None for w in range(n)]
    # a word without a token: the next word's position, else the previous word's, else (no word has
    # a token) the first window's first position
    fill, following = list(own), None
    for w in range(n - 1, -1, -1):
        following = own[w] or following
        fill[w] = following
    previous = (0, 0)
    for w in range(n):
        previous = own[w] or previous
        fill[w] = fill[w] or previous
    rows = np.array([r for r, _ in fill], dtype=np.int64).reshape(n)
    positions = np.array([t for _, t in fill], dtype=np.int64).reshape(n)
    return rows, positions, np.array([o is None for o in own], dtype=bool).reshape(n)


class TextModality(Modality):
    name = "text"
    corpus = "text"  # distillation's corpus builder (modelpress.distill.corpora)
    preprocessor_dir = "tokenizer"

    def load_preprocessor(self, ref: str, *, trust_remote_code: bool = False) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)

    def load_deployed(self, folder: str | Path) -> Any:
        """The bundle's ``tokenizer.json`` run by ``tokenizers`` (``modelpress.tokenization``); a folder
        without one (a slow-only tokenizer) needs transformers, as before."""
        if not (Path(folder) / "tokenizer.json").is_file():
            log.warning("%s: no tokenizer.json; loading the tokenizer with transformers", folder)
            return self.load_preprocessor(str(folder))
        return DeployTokenizer(folder)

    def load_examples(self, path, *, field: str, num_samples: int | None, seed: int = 0) -> list[str]:
        return sample(load_texts(path, text_field=field), num_samples, seed=seed)

    def model_inputs(self, model: Any, tokenizer: Any) -> tuple[str, ...]:
        """Inputs both the tokenizer produces and the model's forward accepts, in canonical order."""
        accepted = set(inspect.signature(model.forward).parameters)
        produced = set(getattr(tokenizer, "model_input_names", CANONICAL_INPUTS))
        names = tuple(n for n in CANONICAL_INPUTS if n in accepted and n in produced)
        if names[:2] != ("input_ids", "attention_mask"):
            raise BadInputError(f"{type(model).__name__}: export needs input_ids and attention_mask inputs")
        return names

    def check_graph_inputs(self, names: Sequence[str], *, source: object = "") -> tuple[str, ...]:
        unknown = [n for n in names if n not in CANONICAL_INPUTS]
        if unknown or "input_ids" not in names:
            raise BadInputError(
                f"{source}: its inputs ({', '.join(names)}) are not a text model's ({', '.join(CANONICAL_INPUTS)})"
            )
        return tuple(names)

    def encoder(
        self,
        tokenizer: Any,
        *,
        input_names: Sequence[str],
        max_length: int,
        input_shapes: Mapping[str, Sequence[Any]] | None = None,
    ) -> TextEncoder:
        return TextEncoder(tokenizer, input_names=input_names, max_length=max_length, window_words=True)

    def export_examples(self, tokenizer: Any, input_names: Sequence[str]) -> tuple[dict, dict]:
        import torch

        def encode(texts, seq):
            enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
            return {k: enc[k].to(torch.int64) for k in input_names}

        return encode(EXAMPLE_TEXTS, EXAMPLE_SEQ), encode(PARITY_TEXTS, PARITY_SEQ)

    def dynamic_shapes(self, input_names: Sequence[str]) -> dict[str, dict[int, Any]]:
        import torch

        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        return {k: {0: batch, 1: seq} for k in input_names}

    def real_positions(self, feed: Mapping[str, np.ndarray]) -> np.ndarray | None:
        return feed.get("attention_mask")

    def engine_profile(self, input_names: Sequence[str], cfg: Any) -> dict[str, dict[str, tuple[int, ...]]]:
        """Every text input is [batch, sequence]: one (batch, seq) range from ``[engine]`` fits all."""
        unknown = [n for n in input_names if n not in CANONICAL_INPUTS]
        if unknown:
            raise BadInputError(
                f"input '{unknown[0]}' is not one of {', '.join(CANONICAL_INPUTS)}; "
                "no optimization profile can be made for it"
            )
        shapes = {
            "min": (cfg.min_batch, cfg.min_seq),
            "opt": (cfg.opt_batch, cfg.opt_seq),
            "max": (cfg.max_batch, cfg.max_seq),
        }
        return {name: dict(shapes) for name in input_names}

    def position_limit(self, model_config: Any, tokenizer: Any = None) -> int | None:
        """``max_position_embeddings`` (less the RoBERTa family's padding offset), capped by the
        tokenizer's ``model_max_length`` when it states a real one."""
        limit = getattr(model_config, "max_position_embeddings", None)
        limit = int(limit) if isinstance(limit, int) and limit > 0 else None
        if limit is not None and getattr(model_config, "model_type", "") in OFFSET_POSITIONS:
            limit -= int(getattr(model_config, "pad_token_id", 1) or 1) + 1
        stated = getattr(tokenizer, "model_max_length", None)
        if isinstance(stated, int) and 0 < stated < 1_000_000:
            limit = min(limit, stated) if limit is not None else stated
        return limit


TEXT = TextModality()


def load_pairs(path, *, text_field: str = "text") -> list[TextPair]:
    """The text pairs of a corpus: records with ``query`` and ``text_field`` (a query and a
    passage) or ``sentence1`` and ``sentence2``; ranking records (``query`` and a list of
    ``passages``), each passage with its query; else texts (``text_field``, a .txt file's lines),
    each with the next one, so that both segments are real text of the corpus, related but not
    equal, as a query and a candidate passage are. A pair with an empty side is skipped (counted
    in the log)."""
    records = read_records(path)
    keys = set(records[0])
    fields = next((f for f in (("query", text_field), ("sentence1", "sentence2")) if set(f) <= keys), None)
    if {"query", "passages"} <= keys:
        pairs = [
            TextPair(text_of(records, i, "query"), passage)
            for i in range(len(records))
            for passage in passages_of(records, i)
        ]
    elif fields is not None:
        pairs = [TextPair(text_of(records, i, fields[0]), text_of(records, i, fields[1])) for i in range(len(records))]
    elif text_field in keys:
        texts = [t for t in (text_of(records, i, text_field) for i in range(len(records))) if t]
        pairs = [TextPair(a, b) for a, b in zip(texts, texts[1:])]
    else:
        raise BadInputError(
            f"{path}: no text pairs: expected the fields query and {text_field}, sentence1 and "
            f"sentence2, query and passages, or texts in '{text_field}' "
            f"(fields: {', '.join(map(str, keys))})"
        )
    kept = [p for p in pairs if p.first and p.second]
    if not kept:
        raise BadInputError(f"{path}: no text pairs (a text corpus pairs each text with the next: it needs two)")
    if len(kept) < len(pairs):
        log.warning("%s: skipped %d pair(s) with an empty text of %d", path, len(pairs) - len(kept), len(pairs))
    return kept


def passages_of(records, i: int) -> list[str]:
    """Ranking record ``i``'s ``passages``, stripped: a list of texts, or an error naming the line."""
    passages = records[i].get("passages")
    if not isinstance(passages, list) or not all(isinstance(p, str) for p in passages):
        raise BadInputError(f"{records.where(i)}: 'passages' must be a list of texts, got {passages!r:.60}")
    return [p.strip() for p in passages]


class TextPairModality(TextModality):
    """Text pairs (cross-encoders): the text modality's tokenizer and inputs, pairs as raw examples."""

    name = "text-pairs"
    corpus = "text-pairs"

    def load_examples(self, path, *, field: str, num_samples: int | None, seed: int = 0) -> list[TextPair]:
        return sample(load_pairs(path, text_field=field), num_samples, seed=seed)

    def export_examples(self, tokenizer: Any, input_names: Sequence[str]) -> tuple[dict, dict]:
        import torch

        def encode(pairs, seq):
            enc = tokenizer(
                *split_pairs([TextPair(*p) for p in pairs]),
                padding="max_length",
                truncation=True,
                max_length=seq,
                return_tensors="pt",
            )
            return {k: enc[k].to(torch.int64) for k in input_names}

        return encode(EXAMPLE_PAIRS, EXAMPLE_SEQ), encode(PARITY_PAIRS, PARITY_SEQ)


TEXT_PAIRS = MODALITIES.register("text-pairs", TextPairModality())  # a variant of text: registered here
