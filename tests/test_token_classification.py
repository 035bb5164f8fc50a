"""Token classification, the task added through the registries: tagged eval readers (CoNLL-U,
CoNLL-2003, jsonl), word alignment on the first sub-token, entity chunks against seqeval, the
word-level metrics against hand computation, and a tiny tagger through ``modelpress run`` to a
bundle whose metrics match a direct transformers computation."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import FAST_CALIBRATION, FAST_VALIDATE, VOCAB, WORDS, cli, write_recipe

from modelpress.errors import BadInputError
from modelpress.measures.entities import chunks, entity_scores, is_chunk_tagset
from modelpress.measures.metrics import token_metrics
from modelpress.tasks.tagged import load_tagged

UPOS = {"NOUN": 0, "VERB": 1, "DET": 2, "PUNCT": 3}
BIO = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


# -- readers --------------------------------------------------------------------------------------
def test_conllu_skips_comments_multiword_tokens_and_empty_nodes(tmp_path):
    path = tmp_path / "x.conllu"
    rows = [
        "# sent_id = 1",
        "# text = The dog's bed.",
        "1\tThe\tthe\tDET\t_\t_\t2\tdet\t_\t_",
        "2-3\tdog's\t_\t_\t_\t_\t_\t_\t_\t_",
        "2\tdog\tdog\tNOUN\t_\t_\t0\troot\t_\t_",
        "3\t's\t's\tPUNCT\t_\t_\t2\tcase\t_\t_",
        "3.1\tghost\t_\tVERB\t_\t_\t_\t_\t_\t_",
        "4\t.\t.\tPUNCT\t_\t_\t2\tpunct\t_\t_",
        "",
        "1\tRuns\trun\tVERB\t_\t_\t0\troot\t_\t_",
        "",
    ]
    path.write_text("\n".join(rows), encoding="utf-8")
    es = load_tagged(path, label2id=UPOS)
    assert es.words == (("The", "dog", "'s", "."), ("Runs",))
    assert es.tags == ((2, 0, 3, 3), (1,))
    assert es.format == "conllu" and es.label_names == ("NOUN", "VERB", "DET", "PUNCT")
    assert load_tagged(path, label2id=UPOS, num_samples=1).words == (("The", "dog", "'s", "."),)
    path.write_text("1\tThe\tthe\tADJ\t_\t_\t2\tdet\t_\t_\n", encoding="utf-8")
    with pytest.raises(BadInputError, match=r"x\.conllu:1: tag 'ADJ' is not a label of the model"):
        load_tagged(path, label2id=UPOS)


def test_conll2003_and_jsonl_formats(tmp_path):
    conll = tmp_path / "ner.txt"
    conll.write_text(
        "-DOCSTART- -X- -X- O\n\nAnna NNP B-NP B-PER\nruns VBZ B-VP O\n\nParis NNP B-NP B-LOC\n", encoding="utf-8"
    )
    label2id = {t: i for i, t in enumerate(BIO)}
    es = load_tagged(conll, label2id=label2id)
    assert es.format == "conll" and es.words == (("Anna", "runs"), ("Paris",)) and es.tags == ((1, 0), (3,))
    jl = tmp_path / "ner.jsonl"
    jl.write_text(
        json.dumps({"tokens": ["Anna", "runs"], "tags": ["B-PER", "O"]})
        + "\n"
        + json.dumps({"tokens": ["Paris"], "tags": [3]})
        + "\n",
        encoding="utf-8",
    )
    assert load_tagged(jl, label2id=label2id).tags == ((1, 0), (3,))  # names or integer ids
    jl.write_text(json.dumps({"tokens": ["Anna", "runs"], "tags": ["B-PER"]}) + "\n", encoding="utf-8")
    with pytest.raises(BadInputError, match=r"ner\.jsonl:1: 2 words but 1 tags"):
        load_tagged(jl, label2id=label2id)
    untagged = tmp_path / "plain.jsonl"
    untagged.write_text(json.dumps({"tokens": ["Anna"]}) + "\n", encoding="utf-8")
    assert load_tagged(untagged, label2id=label2id).tags is None


# -- entity chunks and F1 ---------------------------------------------------------------------------
def test_chunks_follow_conlleval():
    assert chunks(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 1), ("LOC", 3, 3)}
    assert chunks(["I-PER", "I-PER", "O"]) == {("PER", 0, 1)}  # I- after O starts a chunk
    assert chunks(["B-PER", "I-LOC"]) == {("PER", 0, 0), ("LOC", 1, 1)}  # a type change starts one
    assert chunks(["B-PER", "B-PER"]) == {("PER", 0, 0), ("PER", 1, 1)}
    assert chunks(["S-PER", "B-LOC", "E-LOC", "O"]) == {("PER", 0, 0), ("LOC", 1, 2)}  # BIOES
    assert is_chunk_tagset(BIO) and not is_chunk_tagset(UPOS) and not is_chunk_tagset(["O"])


def test_entity_f1_equals_seqeval_on_random_sequences():
    seqeval = pytest.importorskip("seqeval.metrics", reason="seqeval (the dev extra) is not installed")
    rng = random.Random(7)
    gold = [[rng.choice(BIO) for _ in range(rng.randint(1, 12))] for _ in range(200)]
    pred = [[t if rng.random() < 0.7 else rng.choice(BIO) for t in g] for g in gold]
    ours = entity_scores(gold, pred)
    assert ours["f1"] == pytest.approx(seqeval.f1_score(gold, pred), abs=1e-12)
    assert ours["precision"] == pytest.approx(seqeval.precision_score(gold, pred), abs=1e-12)
    assert ours["recall"] == pytest.approx(seqeval.recall_score(gold, pred), abs=1e-12)


def test_token_metrics_by_hand():
    # two sentences; the second was cut to 1 word by the length limit (gold has 2 tags there)
    t = [np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])), np.log(np.array([[0.5, 0.25, 0.25]]))]
    c = [np.log(np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1]])), np.log(np.array([[0.5, 0.25, 0.25]]))]
    m = token_metrics(t, c, tags=((0, 1), (0, 2)), label_names=("O", "B-PER", "I-PER"))
    assert m["top1_agreement"] == pytest.approx(2 / 3)  # word 2 of sentence 1 flips
    kl = [0.7 * np.log(0.7 / 0.6) + 0.2 * np.log(0.2 / 0.3), 0.1 * np.log(0.1 / 0.5) + 0.8 * np.log(0.8 / 0.4), 0.0]
    assert m["mean_kl"] == pytest.approx(np.mean(kl), rel=1e-9)
    assert m["accuracy"] == pytest.approx(2 / 3)  # the cut word is not scored
    # gold chunks {PER 1-1} and {}; predicted: {} and {} → no true positive
    assert m["entity_f1"] == 0.0
    assert "entity_f1" not in token_metrics(t, c, tags=((0, 1), (0, 2)), label_names=("NOUN", "VERB", "DET"))


# -- word alignment ---------------------------------------------------------------------------------
def test_first_subtoken_of_each_word_matches_transformers_word_ids(tiny_tagger):
    from transformers import AutoTokenizer

    from modelpress.modalities.text import TextEncoder

    tok = AutoTokenizer.from_pretrained(str(tiny_tagger))
    # "unknownword" and the punctuation split into several tokens; the last sentence is cut at 8 tokens by
    # the truncating encoder (distillation's; validation and the bundle window long sentences instead)
    sentences = [["The", "dog", "runs", "."], ["unknownword", "cat", "!", "?"], WORDS[:20]]
    batch = TextEncoder(tok, input_names=("input_ids", "attention_mask"), max_length=8).encode(sentences)
    ref = tok(sentences, is_split_into_words=True, truncation=True, max_length=8, padding="longest")
    for i, first in enumerate(batch.first_tokens):
        word_ids = ref.word_ids(i)
        expected = [word_ids.index(w) for w in dict.fromkeys(w for w in word_ids if w is not None)]
        assert first.tolist() == expected
    assert len(batch.first_tokens[2]) == 6 < 20  # [CLS] + 6 words + [SEP]: a prefix of the words


#: words a WordPiece tokenizer turns into no token at all (zero-width space, BOM, NUL, soft hyphen, "")
TOKENLESS = ("\u200b", "\ufeff", "\x00", "\u00ad", "")


def _windowed_reference(model, tok, words, max_length):
    """Each word's logits, computed here without modelpress: transformers' own ``word_ids`` on the
    whole sentence, windows cut by hand (``max_length`` with [CLS]/[SEP], half of each window's
    content shared with the next), each window run through the PyTorch model on its own; a word is
    read in the window where its first sub-token has the most tokens on its poorer side (the earlier
    window on a tie); a word with no token takes the next word's logits (the previous word's at the end)."""
    import torch

    enc = tok(list(words), is_split_into_words=True, add_special_tokens=False)
    ids, word_ids = enc["input_ids"], enc.word_ids()
    content = max_length - 2
    step = content - content // 2
    starts = [0]
    while starts[-1] + content < len(ids):
        starts.append(starts[-1] + step)
    logits = []
    for s in starts:
        with torch.no_grad():
            window = torch.tensor([[tok.cls_token_id, *ids[s : s + content], tok.sep_token_id]])
            logits.append(model(input_ids=window).logits[0, 1:-1].numpy())

    def context(k, g):
        end = min(starts[k] + content, len(ids))
        return min(g - starts[k], end - 1 - g)

    own = {}
    for w in dict.fromkeys(x for x in word_ids if x is not None):
        g = word_ids.index(w)
        k = max(
            (k for k in range(len(starts)) if starts[k] <= g < starts[k] + content), key=lambda k: (context(k, g), -k)
        )
        own[w] = logits[k][g - starts[k]]
    rows = []
    for w in range(len(words)):
        following = [own[v] for v in range(w, len(words)) if v in own]
        preceding = [own[v] for v in range(w, -1, -1) if v in own]
        rows.append(following[0] if following else preceding[0])
    return np.stack(rows)


def test_every_word_is_scored_even_without_a_token_or_past_max_length(tiny_tagger, tmp_path):
    """issue 21 case 4: a word with no sub-token ended its sentence and a sentence longer than
    max_length was cut (a run reported num_words 316 but scored 30). Now every word is scored:
    each word's logits equal the PyTorch model's run here window by window, and the eval section
    counts the words without a token and the windowed sentences."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from modelpress.config_check import check_section
    from modelpress.modalities.text import TEXT
    from modelpress.recipe import ValidateConfig
    from modelpress.tasks import configure_task
    from modelpress.validate.stage import open_predictor

    tok = AutoTokenizer.from_pretrained(str(tiny_tagger))
    model = AutoModelForTokenClassification.from_pretrained(str(tiny_tagger)).eval()
    sentences = _tagged_sentences(10, seed=4)
    for k, odd in enumerate(TOKENLESS):  # inside a sentence, first, and last
        words, tags = sentences[k]
        at = (1, 0, len(words), 1, 2)[k]
        sentences[k] = (words[:at] + [odd] + words[at:], tags[:at] + ["O"] + tags[at:])
    rng = random.Random(8)
    for n in (50, 90):  # longer than max_length 16: windowed
        words = [rng.choice(WORDS) for _ in range(n)]
        words[n // 2] = "\u200b"
        sentences.append((words, [rng.choice(BIO) for _ in range(n)]))
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in sentences), encoding="utf-8")
    task = configure_task("token-classification")
    cfg = check_section(ValidateConfig, "validate", {"eval_data": str(path), "max_length": 16, "batch_size": 4})
    es = task.read_eval(path, cfg, model_config=model.config, preprocessor=tok)
    described = es.describe()
    assert described["num_words"] == sum(len(w) for w, _ in sentences)
    assert described["words_without_tokens"] == len(TOKENLESS) + 2 and described["windowed_sentences"] == 2
    encoder = TEXT.encoder(tok, input_names=("input_ids", "attention_mask", "token_type_ids"), max_length=16)
    teacher = open_predictor("torch", model, task=task, encoder=encoder, threads=1, name="teacher")
    try:
        out = task.eval_outputs(teacher, es, cfg)
    finally:
        teacher.runner.close()
    refs = [_windowed_reference(model, tok, words, 16) for words, _ in sentences]
    for (words, _), got, ref in zip(sentences, out, refs):
        assert got.shape == (len(words), len(BIO))
        np.testing.assert_allclose(got, ref, atol=1e-5)
    # a word without a token reads the next word (the zero-width space), or the previous one at the end (NUL)
    np.testing.assert_array_equal(out[0][1], out[0][2])
    np.testing.assert_array_equal(out[2][-1], out[2][-2])
    gold = np.concatenate([[BIO.index(t) for t in tags] for _, tags in sentences])
    accuracy = float(np.mean(np.concatenate([r.argmax(-1) for r in refs]) == gold))
    assert task.reference_metrics(out, es)["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    # a window must hold a word beside [CLS] and [SEP]: one line naming the key
    tight = check_section(ValidateConfig, "validate", {"eval_data": str(path), "max_length": 2})
    with pytest.raises(
        BadInputError,
        match=r"^validate.max_length: 2 leaves no position for a word beside the "
        r"tokenizer's 2 special tokens$",
    ):
        task.read_eval(path, tight, model_config=model.config, preprocessor=tok)


# -- the task through `modelpress run` ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_tagger(tmp_path_factory):
    from conftest import INIT_RANGE, SPECIAL_TOKENS

    from modelpress.testing import make_tiny_model

    return make_tiny_model(
        tmp_path_factory.mktemp("tagger"),
        task="token-classification",
        labels=BIO,
        words=VOCAB[len(SPECIAL_TOKENS) :],
        initializer_range=INIT_RANGE,
        seed=3,
    )


def _tagged_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 14))]
        tags, inside = [], None
        for _ in words:
            if inside and rng.random() < 0.5:
                tags.append(f"I-{inside}")
            elif rng.random() < 0.3:
                inside = rng.choice(["PER", "LOC"])
                tags.append(f"B-{inside}")
            else:
                inside = None
                tags.append("O")
        out.append((words, tags))
    return out


def _torch_word_logits(model_dir, sentences, max_length):
    """The tagger's logits at each word's first sub-token, computed with transformers' own word_ids."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForTokenClassification.from_pretrained(str(model_dir)).eval()
    out = []
    for words in sentences:
        enc = tok(words, is_split_into_words=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0].numpy()
        ids = enc.word_ids(0)
        firsts = [ids.index(w) for w in dict.fromkeys(w for w in ids if w is not None)]
        out.append(logits[firsts])
    return out


def test_tagger_run_publishes_a_bundle_whose_metrics_match_transformers(tiny_tagger, data_files, tmp_path):
    """Also issue 21 case 4 through `modelpress run` and the bundle: words without a token and a
    sentence longer than max_length are all scored, and `tag()` returns one tag per input word."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    sentences = _tagged_sentences(40, seed=21)
    for k, odd in enumerate(TOKENLESS[:2] + TOKENLESS[3:4]):  # what a CoNLL line can hold
        words, tags = sentences[k]
        sentences[k] = ([odd] + words, ["O"] + tags)
    rng = random.Random(22)
    sentences.append(([rng.choice(WORDS) for _ in range(45)], [rng.choice(BIO) for _ in range(45)]))
    conll = tmp_path / "eval.conll"
    conll.write_text(
        "\n\n".join("\n".join(f"{w} {t}" for w, t in zip(ws, ts)) for ws, ts in sentences) + "\n", encoding="utf-8"
    )
    recipe = write_recipe(
        tmp_path / "tagger.toml",
        {"name": "tagger", "teacher": str(tiny_tagger), "task": "token-classification"},
        {
            "calibration": {"data": str(data_files.calibration_txt), **FAST_CALIBRATION},
            "validate": {"eval_data": str(conll), **FAST_VALIDATE},
            "gate": {"max_drop": 5.0},
        },
    )
    proc = cli("run", recipe, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "out" / "tagger"
    report = json.loads((root / "report.json").read_text())
    assert report["task"] == "token-classification" and report["gate"]["metric"] == "entity_f1"
    assert report["eval"]["num_words"] == sum(len(w) for w, _ in sentences)
    assert (report["eval"]["words_without_tokens"], report["eval"]["windowed_sentences"]) == (3, 1)
    teacher = report["models"]["teacher"]["metrics"]
    assert set(teacher) == {"top1_agreement", "mean_kl", "accuracy", "entity_f1"}
    # the teacher's word accuracy and entity F1 over every word, computed here from transformers' own
    # alignment, window by window
    words = [w for w, _ in sentences]
    tok = AutoTokenizer.from_pretrained(str(tiny_tagger))
    model = AutoModelForTokenClassification.from_pretrained(str(tiny_tagger)).eval()
    ref = [_windowed_reference(model, tok, w, FAST_VALIDATE["max_length"]) for w in words]
    label2id = {t: i for i, t in enumerate(BIO)}
    gold = [[label2id[t] for t in ts] for _, ts in sentences]
    pred = [r.argmax(-1) for r in ref]
    accuracy = float(np.mean(np.concatenate(pred) == np.concatenate(gold)))
    assert teacher["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    f1 = entity_scores([[BIO[i] for i in g] for g in gold], [[BIO[i] for i in p] for p in pred])["f1"]
    assert teacher["entity_f1"] == pytest.approx(f1, abs=1e-6)
    # the int8 bundle tags like the fp32 tagger on almost every word
    assert report["models"]["int8"]["metrics"]["top1_agreement"] > 0.9
    from modelpress.bundle import load

    with load(root) as bundle:
        tagged = bundle.tag(["the dog runs", words[0]])
        assert [w for w, _, _ in tagged[0]] == ["the", "dog", "runs"]
        assert all(label in BIO and 0 < p <= 1 for _, label, p in tagged[0])
        # a zero-width space is a word with the next word's tag; a text past max_length is windowed
        spaced = bundle.tag(["the \u200b cat sat on a mat"])[0]
        assert [w for w, _, _ in spaced] == ["the", "\u200b", "cat", "sat", "on", "a", "mat"]
        assert spaced[1][1:] == spaced[2][1:]
        long = bundle.tag(["cat " * 5000])[0]
        assert len(long) == 5000 and all(w == "cat" and label in BIO for w, label, _ in long)
        # a text with no token at all has no word to read a tag from: untagged, not [CLS]'s tag (it
        # was `[("\u200b", "I-LOC", 0.52)]`, read at the first position)
        alone = bundle.tag(["\u200b", ["", "\ufeff"], "the \u200b"])
        assert alone[:2] == [[("\u200b", None, 0.0)], [("", None, 0.0), ("\ufeff", None, 0.0)]]
        assert [label in BIO for _, label, _ in alone[2]] == [True, True] and alone[2][1][1:] == alone[2][0][1:]
        with pytest.raises(BadInputError, match="token-classification model; use tag"):
            bundle.embed(["a dog"])
    meta = json.loads((root / "bundle.json").read_text())
    assert meta["label_names"] == list(BIO) and meta["task"] == {"task": "token-classification"}


# -- distillation of a tagger -----------------------------------------------------------------------
def test_tagged_corpus_puts_each_tag_on_the_first_subtoken(tiny_tagger, tmp_path):
    from transformers import AutoTokenizer

    from modelpress.distill.config import DistillConfig
    from modelpress.distill.data import IGNORE, load_corpus, tokenize_corpus

    path = tmp_path / "train.jsonl"
    # a word without a token (the zero-width space) labels no token, and the words after it keep theirs
    sentences = [
        (["the", "unknownword", "runs"], ["B-PER", "I-PER", "O"]),
        (["a", "cat"], ["O", "B-LOC"]),
        (["a", "\u200b", "cat", "runs"], ["O", "B-PER", "B-LOC", "O"]),
    ]
    path.write_text("".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in sentences), encoding="utf-8")
    cfg = DistillConfig.from_dict({"data": str(path), "num_layers": 1, "label_field": "tags"}, base_dir=tmp_path)
    label2id = {t: i for i, t in enumerate(BIO)}
    corpus = load_corpus(cfg, label2id=label2id, per_token=True)
    tok = AutoTokenizer.from_pretrained(str(tiny_tagger))
    tokenized = tokenize_corpus(tok, corpus, max_length=32)
    for (words, tags), ids, labels in zip(sentences, tokenized.features["input_ids"], tokenized.labels):
        ref = tok(words, is_split_into_words=True)
        word_ids = ref.word_ids()
        assert ids == ref["input_ids"]
        expected = [IGNORE] * len(ids)
        for w in dict.fromkeys(w for w in word_ids if w is not None):
            expected[word_ids.index(w)] = label2id[tags[w]]
        assert list(labels) == expected
    batch = tokenized.collate([0, 1])
    assert batch["labels"].shape == batch["input_ids"].shape and int((batch["labels"] != IGNORE).sum()) == 5


def test_a_tagger_distils_with_token_kl_and_cross_entropy(tiny_tagger, tmp_path):
    import torch
    from transformers import AutoModelForTokenClassification

    from modelpress.distill.config import DistillConfig
    from modelpress.distill.pipeline import run_distillation

    # gold tags = the teacher's own tags, so that cross-entropy and KL pull the same way
    words = [w for w, _ in _tagged_sentences(96, seed=5)]
    tags = [[BIO[k] for k in logits.argmax(-1)] for logits in _torch_word_logits(tiny_tagger, words, 64)]
    path = tmp_path / "train.conll"
    path.write_text(
        "\n\n".join("\n".join(f"{w} {t}" for w, t in zip(ws, ts)) for ws, ts in zip(words, tags)) + "\n",
        encoding="utf-8",
    )
    section = {
        "data": str(path),
        "layers": [0],
        "label_field": "tags",
        "max_steps": 30,
        "batch_size": 16,
        "lr": 3e-3,
        "precision": "fp32",
        "eval_fraction": 0.1,
        "save_every": 100,
    }
    cfg = DistillConfig.from_dict(section, base_dir=tmp_path)
    student_dir = run_distillation(cfg, teacher=str(tiny_tagger), task="token-classification", out_dir=tmp_path / "run")
    summary = json.loads((student_dir / "distill.json").read_text())
    assert summary["kept_layers"] == [0] and summary["config"]["label_field"] == "tags"
    history = summary["evaluations"]
    assert history and set(history[-1]) >= {"agreement", "kl"}
    student = AutoModelForTokenClassification.from_pretrained(str(student_dir)).eval()
    assert student.config.id2label == {i: t for i, t in enumerate(BIO)}
    # KL over real tokens fell from where the untrained 1-layer subset started
    from modelpress.distill.student import build_layer_subset

    teacher = AutoModelForTokenClassification.from_pretrained(str(tiny_tagger)).eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_tagger))
    enc = tok([" ".join(w) for w, _ in _tagged_sentences(30, seed=99)], padding=True, return_tensors="pt")

    def kl(model):
        with torch.no_grad():
            lt = torch.log_softmax(teacher(**enc).logits, -1)
            ls = torch.log_softmax(model(**enc).logits, -1)
        per = (lt.exp() * (lt - ls)).sum(-1)
        m = enc["attention_mask"].float()
        return float((per * m).sum() / m.sum())

    assert kl(student) < 0.8 * kl(build_layer_subset(teacher, [0]).eval())
