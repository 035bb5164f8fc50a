"""token-classification: a label per word (POS tags, named entities), from a token-classification
model's ``logits`` [batch, tokens, labels], read at the first sub-token of each word. Every input
word gets exactly one tag (``modelpress.modalities.text``): a word the tokenizer turns into no
token (a zero-width space, a BOM, NUL, a soft hyphen, "") takes the next word's (the previous
word's at the end), and a sentence longer than ``max_length`` is read in overlapping windows; the
report's ``eval`` counts both (``words_without_tokens``, ``windowed_sentences``).

Metrics against the teacher, per word: top-1 agreement, mean KL(teacher ‖ model); against gold
tags when the eval set has them: word accuracy, and entity-level F1 (conlleval's chunk rules) when
the model's labels are a BIO / BIOES tag set. The gate judges entity F1, else accuracy, else
agreement. Eval formats: ``conllu`` (the UPOS column), ``conll`` (CoNLL-2003 style: word first,
tag last, blank line between sentences), ``jsonl`` with ``tokens`` and ``tags`` lists.
Calibration reads plain text; distillation compares token logits (KL, + cross-entropy on gold tags).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from modelpress import task_match
from modelpress.tasks import HIGHER, LOWER, DistillSpec, Task
from modelpress.bundle_base import Bundle
from modelpress.measures import uncertainty as U
from modelpress.measures.entities import chunks
from modelpress.modalities import get_modality
from modelpress.tasks.tagged import load_tagged
from modelpress.tasks.text_classification import softmax
from modelpress.measures import metrics as M

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenClassification(Task):
    name: ClassVar[str] = "token-classification"
    #: untagged sentences by default (agreement with the teacher; no gold tags ship)
    auto: ClassVar[task_match.AutoSpec] = task_match.AutoSpec(
        architectures=("ForTokenClassification",), eval_data="calibration_data/en_words_eval.jsonl"
    )
    auto_class: ClassVar[str] = "AutoModelForTokenClassification"
    output_name: ClassVar[str] = "logits"
    metrics: ClassVar[Mapping[str, str]] = {
        "top1_agreement": HIGHER,
        "mean_kl": LOWER,
        "accuracy": HIGHER,
        "entity_f1": HIGHER,
    }
    eval_formats: ClassVar[tuple[str, ...]] = ("conllu", "conll", "jsonl")
    eval_record: ClassVar[str] = "modelpress.tasks.tagged:TaggedEvalSet"
    batch_payload: ClassVar[str] = "modelpress.modalities.text:WordBatch"
    distill: ClassVar[DistillSpec] = DistillSpec(
        output="token_logits",
        losses=frozenset({"kl", "ce", "hidden_mse", "attention_kl"}),
        defaults={"kl": 1.0},
        label_loss="ce",
    )
    needs_labels: ClassVar[bool] = True
    api: ClassVar[tuple[str, ...]] = ("tag",)

    @classmethod
    def eval_lines(cls, eval_desc: Mapping[str, Any]) -> list[str]:
        """How the eval set's words met the tokenizer (counted once a tokenizer read them)."""
        if "words_without_tokens" not in eval_desc:
            return []
        return [
            f"- every word tagged: {eval_desc['words_without_tokens']} without a token of their "
            "own (read at the next word's position, or the previous word's at the end), "
            f"{eval_desc['windowed_sentences']} sentences longer than max_length (read in "
            "overlapping windows)"
        ]

    def prepare(self, examples: Sequence[Any]) -> list[Any]:
        """Each example as its words: a string is split on whitespace, a list is taken as words."""
        return [e.split() if isinstance(e, str) else [str(w) for w in e] for e in examples]

    def postprocess(self, outputs: Mapping[str, np.ndarray], batch: Any) -> list[np.ndarray]:
        """Per example, [words, labels]: each word's logits, in the feed row (window) it is read in."""
        logits = np.asarray(outputs[self.output_name], dtype=np.float32)
        rows = getattr(batch, "word_rows", None) or [np.full(len(f), i) for i, f in enumerate(batch.first_tokens)]
        return [logits[row, first] for row, first in zip(rows, batch.first_tokens)]

    def torch_target(self, model_output: Any, inputs: Mapping[str, Any]) -> Any:
        return model_output.logits

    def read_eval(self, path: str | Path, cfg: Any, *, model_config: Any = None, preprocessor: Any = None):
        label2id = dict(getattr(model_config, "label2id", None) or {})
        es = load_tagged(
            path,
            fmt=cfg.eval_format,
            label2id=label2id,
            num_samples=cfg.num_samples,
            tokens_field=cfg.text_field if cfg.text_field != "text" else "tokens",
            tags_field=cfg.label_field if cfg.label_field != "label" else "tags",
        )
        return es if preprocessor is None else self.with_coverage(es, preprocessor, max_length=cfg.max_length)

    def with_coverage(self, es: Any, tokenizer: Any, *, max_length: int) -> Any:
        """``es`` with the count of its words that have no token and of its sentences that are
        windowed, as validation's encoder (the text modality's, at ``max_length``) reads them."""
        encoder = get_modality(self.modality).encoder(
            tokenizer, input_names=("input_ids", "attention_mask"), max_length=max_length
        )
        counts = encoder.word_coverage(es.words)
        if any(counts.values()):
            log.info(
                "%s: %d word(s) have no token of their own (each is read at the next word's first "
                "sub-token); %d sentence(s) are longer than max_length %d (read in overlapping windows)",
                es.source,
                counts["words_without_tokens"],
                counts["windowed_sentences"],
                max_length,
            )
        return replace(es, **counts)

    def reference_metrics(self, teacher_out: list[np.ndarray], es: Any) -> dict[str, float]:
        return M.token_metrics(teacher_out, teacher_out, es.tags, es.label_names)

    def fidelity(self, teacher_out: list[np.ndarray], candidate_out: list[np.ndarray], es: Any) -> dict[str, float]:
        return M.token_metrics(teacher_out, candidate_out, es.tags, es.label_names)

    def paired_units(self, metric: str, teacher_out: list[np.ndarray], candidate_out: list[np.ndarray], es: Any):
        """Sentences are the units (words of a sentence are not independent); word metrics are
        ratios of per-sentence sums."""
        words = [len(c) for c in candidate_out]
        if metric == "top1_agreement":
            agree = [int((t.argmax(-1) == c.argmax(-1)).sum()) for t, c in zip(teacher_out, candidate_out)]
            return U.PairedUnits(U.as_arrays(agree, words), U.ratio_complement(), "sentences")
        if metric == "mean_kl":
            kl = [float(M.kl_per_row(t, c).sum()) for t, c in zip(teacher_out, candidate_out)]
            return U.PairedUnits(U.as_arrays(kl, words), U.ratio_rise(), "sentences")
        if es.tags is None:
            return None
        gold = [np.asarray(g) for g in es.tags]  # every word has its tag (modelpress.modalities.text)
        if metric == "accuracy":
            t_ok = [int((t.argmax(-1) == g).sum()) for t, g in zip(teacher_out, gold)]
            c_ok = [int((c.argmax(-1) == g).sum()) for c, g in zip(candidate_out, gold)]
            return U.PairedUnits(U.as_arrays(t_ok, c_ok, words), U.ratio_drop(), "sentences")
        if metric == "entity_f1" and es.label_names:
            names = list(es.label_names)

            def counts(out):
                tp, pred = [], []
                for o, g in zip(out, gold):
                    gc, pc = chunks([names[i] for i in g]), chunks([names[i] for i in o.argmax(-1)])
                    tp.append(len(gc & pc))
                    pred.append(len(pc))
                return tp, pred

            (t_tp, t_pred), (c_tp, c_pred) = counts(teacher_out), counts(candidate_out)
            n_gold = [len(chunks([names[i] for i in g])) for g in gold]
            return U.PairedUnits(U.as_arrays(t_tp, t_pred, c_tp, c_pred, n_gold), U.f1_drop(), "sentences")
        return None

    @classmethod
    def primary_metric(cls, available: set[str]) -> str:
        for name in ("entity_f1", "accuracy"):
            if name in available:
                return name
        return "top1_agreement"

    @classmethod
    def bundle_class(cls) -> type:
        class TaggerBundle(Bundle):
            def tag(
                self, texts: str | Sequence[str | Sequence[str]], *, batch_size: int = 32
            ) -> list[list[tuple[str, str | None, float]]]:
                """Per text (a string, split on whitespace, or a list of words): ``(word, label,
                probability)`` for every word, in order. A text longer than the model's length
                limit is read in overlapping windows; a word the tokenizer makes no token of (a
                zero-width space, a BOM, "") gets the next word's tag (the previous word's at
                the end). A text of which the tokenizer makes no token at all has no word to read
                a tag from: its words are untagged, ``(word, None, 0.0)``."""
                examples = self.task.prepare(self._texts(texts, words=True))
                names = self.label_names()
                out = []
                for words, logits, untagged in zip(
                    examples, self.predict(examples, batch_size=batch_size), self._tokenless_texts(examples)
                ):
                    if untagged:  # the encoder read them at the first position ([CLS]): no word's tag
                        out.append([(w, None, 0.0) for w in words])
                        continue
                    p = softmax(logits)
                    best = p.argmax(axis=-1)
                    out.append([(w, names[k], float(p[i, k])) for i, (w, k) in enumerate(zip(words, best))])
                return out

            def _tokenless_texts(self, examples: list[list[str]]) -> list[bool]:
                """Per text, whether the tokenizer makes no token of any of its words."""
                if not examples:
                    return []
                ids = self.encoder.tokenizer([" ".join(words) for words in examples], add_special_tokens=False)[
                    "input_ids"
                ]
                return [len(row) == 0 for row in ids]

        return TaggerBundle
