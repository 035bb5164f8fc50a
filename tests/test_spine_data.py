"""Corpus loaders, deterministic sampling, tokenized feeds (dynamic padding, sorting), eval sets."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from conftest import NUM_LABELS, SHARED_DATA, STSB_TEST, make_texts, needs_shared_data

from modelpress.calibration_data.feeds import TokenizedFeed
from modelpress.calibration_data.loaders import load_texts, read_records, sample
from modelpress.errors import BadInputError
from modelpress.tasks.evalsets import load_eval_set


# -- loaders ------------------------------------------------------------------------------------------
def test_txt_skips_blank_lines_and_strips(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("  first line \n\n\t\nsecond line\nthird\n", encoding="utf-8")
    assert load_texts(p) == ["first line", "second line", "third"]


def test_jsonl_reads_the_named_field_and_skips_empty_texts(tmp_path):
    p = tmp_path / "a.jsonl"
    rows = [{"text": "one", "body": "b1"}, {"text": "  ", "body": "b2"}, {"text": "two", "body": "b4"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert load_texts(p) == ["one", "two"]  # an empty text is skipped (and counted)
    assert load_texts(p, text_field="body") == ["b1", "b2", "b4"]
    # a null is not a text: it is named with its line, never read as "None"
    p.write_text("\n".join(json.dumps(r) for r in rows + [{"text": None, "body": "b5"}]) + "\n", encoding="utf-8")
    with pytest.raises(BadInputError, match=r"a\.jsonl:4: 'text' is NoneType None, not text"):
        load_texts(p)
    with pytest.raises(BadInputError, match="no field 'sentence'") as exc:
        load_texts(p, text_field="sentence")
    assert "text" in str(exc.value) and "body" in str(exc.value)  # the fields that do exist


def test_csv_and_tsv_with_headers(tmp_path):
    (tmp_path / "a.csv").write_text('id,text\n1,"hello, world"\n2,plain\n', encoding="utf-8")
    assert load_texts(tmp_path / "a.csv") == ["hello, world", "plain"]
    # TSV: GLUE-style bare quote characters are text, not quoting
    (tmp_path / "a.tsv").write_text('sentence\tlabel\nit \'s a "great" film \t1\nbad\t0\n', encoding="utf-8")
    assert load_texts(tmp_path / "a.tsv", text_field="sentence") == ['it \'s a "great" film', "bad"]
    assert read_records(tmp_path / "a.tsv")[1] == {"sentence": "bad", "label": "0"}


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", "", "contains no records"),
        ("blank.txt", "\n  \n\n", "contains no records"),
        ("empty.jsonl", "", "contains no records"),
        ("empty.csv", "", "no header row"),
        ("header_only.csv", "text\n", "contains no records"),
        ("bad.jsonl", '{"text": "ok"}\n{"text": \n', r"bad\.jsonl:2: not valid JSON"),
        ("list.jsonl", '["a", "b"]\n', "expected a JSON object"),
        ("data.xml", "<a/>", "unsupported data file"),
    ],
)
def test_unusable_files_raise_bad_input_naming_the_file(tmp_path, name, content, message):
    p = tmp_path / name
    p.write_text(content, encoding="utf-8")
    with pytest.raises(BadInputError, match=message) as exc:
        load_texts(p)
    assert name in str(exc.value)


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(BadInputError, match="no such file"):
        load_texts(tmp_path / "absent.txt")
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(BadInputError, match="not UTF-8"):
        load_texts(tmp_path / "latin.txt")
    (tmp_path / "empty_texts.jsonl").write_text('{"text": ""}\n{"text": " "}\n', encoding="utf-8")
    with pytest.raises(BadInputError, match="holds no text"):
        load_texts(tmp_path / "empty_texts.jsonl")


def test_sample_is_deterministic_ordered_and_complete_when_large():
    items = list(range(100))
    a, b = sample(items, 10, seed=3), sample(items, 10, seed=3)
    assert a == b and len(a) == 10 and len(set(a)) == 10
    assert a == sorted(a)  # a subsequence, in corpus order
    assert sample(items, 10, seed=4) != a  # the seed matters
    assert sample(items, 100) == items and sample(items, 1000) == items and sample(items, None) == items
    assert sample(iter(items), 5, seed=3) == sample(items, 5, seed=3)


# -- feeds ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_bert.path))


def test_tokenizer_knows_the_words_of_the_texts(tokenizer):
    ids = tokenizer(make_texts(20, seed=5))["input_ids"]
    assert tokenizer.unk_token_id not in {i for row in ids for i in row}


def _lengths(tokenizer, texts, max_length):
    return [len(x) for x in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]


def test_feed_pads_each_batch_to_its_longest_text(tokenizer):
    texts = make_texts(23, seed=6, max_words=30)
    lengths = _lengths(tokenizer, texts, 24)
    feed = TokenizedFeed(texts, tokenizer, batch_size=5, max_length=24)
    batches = list(feed)
    assert len(batches) == len(feed) == 5
    assert [b["input_ids"].shape[0] for b in batches] == [5, 5, 5, 5, 3]
    for k, b in enumerate(batches):
        assert set(b) == {"input_ids", "token_type_ids", "attention_mask"}
        assert all(v.dtype == np.int64 and v.flags["C_CONTIGUOUS"] for v in b.values())
        assert b["input_ids"].shape[1] == max(lengths[5 * k : 5 * k + 5]) <= 24
        assert b["attention_mask"].sum(axis=1).tolist() == lengths[5 * k : 5 * k + 5]
    # re-iterable: a second pass gives the same batches
    for b1, b2 in zip(batches, feed):
        assert all(np.array_equal(b1[k], b2[k]) for k in b1)


def test_feed_fixed_length_input_names_and_empty(tokenizer):
    texts = make_texts(7, seed=7)
    feed = TokenizedFeed(
        texts,
        tokenizer,
        batch_size=4,
        max_length=40,
        pad_to_max_length=True,
        input_names=("input_ids", "attention_mask"),
    )
    for b in feed:
        assert set(b) == {"input_ids", "attention_mask"} and b["input_ids"].shape[1] == 40
    with pytest.raises(BadInputError, match="empty"):
        TokenizedFeed([], tokenizer)
    with pytest.raises(BadInputError):
        TokenizedFeed(texts, tokenizer, batch_size=0)


def test_sorted_feed_has_nondecreasing_lengths_same_texts_and_less_padding(tokenizer):
    texts = make_texts(40, seed=8, max_words=30)
    plain = list(TokenizedFeed(texts, tokenizer, batch_size=8, max_length=64))
    ordered = list(TokenizedFeed(texts, tokenizer, batch_size=8, max_length=64, sort_by_length=True))

    def rows(batches):
        return Counter(
            tuple(ids[m.astype(bool)]) for b in batches for ids, m in zip(b["input_ids"], b["attention_mask"])
        )

    assert rows(plain) == rows(ordered)  # the same texts, only reordered
    real = [int(n) for b in ordered for n in b["attention_mask"].sum(axis=1)]
    assert real == sorted(real)
    pad = lambda bs: sum(int((1 - b["attention_mask"]).sum()) for b in bs)  # noqa: E731
    assert pad(ordered) < pad(plain)


# -- eval sets --------------------------------------------------------------------------------------
def test_text_eval_set_with_and_without_labels(data_files):
    es = load_eval_set(data_files.text_jsonl)
    assert es.format == "text" and es.labels is None and es.pairs is None
    assert es.texts == data_files.eval_texts
    lab = load_eval_set(data_files.labelled_jsonl)
    assert lab.texts == data_files.eval_texts
    assert lab.labels == tuple(k % NUM_LABELS for k in range(len(data_files.eval_texts)))
    assert load_eval_set(data_files.labelled_jsonl, num_samples=5).labels == (0, 1, 2, 0, 1)


def test_pairs_eval_set_indexes_unique_texts(tmp_path, data_files):
    es = load_eval_set(data_files.pairs_jsonl)
    rows = [json.loads(line) for line in data_files.pairs_jsonl.read_text(encoding="utf-8").splitlines()]
    assert es.format == "pairs" and len(es.pairs) == len(rows) == 30
    for (i, j, score), row in zip(es.pairs, rows):
        assert (es.texts[i], es.texts[j], score) == (row["sentence1"], row["sentence2"], row["score"])
    assert len(es.texts) == len(set(es.texts))
    # a repeated sentence is stored once
    p = tmp_path / "dup.jsonl"
    p.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"sentence1": "a b", "sentence2": "c", "score": 1},
                {"sentence1": "c", "sentence2": "a b", "score": "2.5"},
            ]
        ),
        encoding="utf-8",
    )
    dup = load_eval_set(p)
    assert dup.texts == ("a b", "c") and dup.pairs == ((0, 1, 1.0), (1, 0, 2.5))
    assert load_eval_set(data_files.pairs_jsonl, num_samples=4).pairs == es.pairs[:4]


def test_stsb_layout_is_auto_detected(data_files):
    es = load_eval_set(data_files.stsb_tsv)
    lines = data_files.stsb_tsv.read_text(encoding="utf-8").splitlines()
    assert es.format == "stsb" and len(es.pairs) == len(lines) == 12
    for (i, j, score), line in zip(es.pairs, lines):
        f = line.split("\t")
        assert (es.texts[i], es.texts[j], score) == (f[5], f[6], float(f[4]))
    assert load_eval_set(data_files.stsb_tsv, fmt="stsb").pairs == es.pairs


def test_pairs_tsv_with_header_is_pairs_not_stsb(tmp_path):
    p = tmp_path / "pairs.tsv"
    p.write_text("sentence1\tsentence2\tscore\na cat\ta dog\t3.5\n", encoding="utf-8")
    es = load_eval_set(p)
    assert es.format == "pairs" and es.texts == ("a cat", "a dog") and es.pairs == ((0, 1, 3.5),)


def test_eval_set_errors(tmp_path, data_files):
    with pytest.raises(BadInputError, match="not found"):
        load_eval_set(tmp_path / "absent.jsonl")
    with pytest.raises(BadInputError, match=r"texts\.jsonl:1: a pair needs the fields sentence1, sentence2, score"):
        load_eval_set(data_files.text_jsonl, fmt="pairs")
    with pytest.raises(BadInputError, match="expected 7 tab-separated"):
        load_eval_set(data_files.text_jsonl, fmt="stsb")
    bad = tmp_path / "bad_label.jsonl"
    bad.write_text('{"text": "a", "label": "positive"}\n', encoding="utf-8")
    with pytest.raises(BadInputError, match="not an integer class id"):
        load_eval_set(bad)
    score = tmp_path / "bad_score.jsonl"
    score.write_text('{"sentence1": "a", "sentence2": "b", "score": "high"}\n', encoding="utf-8")
    with pytest.raises(BadInputError, match="not a number"):
        load_eval_set(score)
    with pytest.raises(BadInputError, match="no field 'body'"):
        load_eval_set(data_files.text_jsonl, text_field="body")


@needs_shared_data
def test_real_stsb_test_file_is_read_as_stsb():
    es = load_eval_set(STSB_TEST)
    assert es.format == "stsb" and len(es.pairs) == 1379
    scores = [s for _, _, s in es.pairs]
    assert min(scores) == 0.0 and max(scores) == 5.0
    assert len(load_eval_set(STSB_TEST, num_samples=200).pairs) == 200


@needs_shared_data
def test_real_sst2_dev_is_a_labelled_text_set():
    es = load_eval_set(SHARED_DATA / "sst2" / "dev.tsv", text_field="sentence")
    assert es.format == "text" and len(es.texts) == 872
    assert Counter(es.labels) == {1: 444, 0: 428}
    assert all(t == t.strip() for t in es.texts)
