"""The bundle API at its edges (issue 21 case 8): a prompt longer than the model's positions, new
tokens past them, sampling options out of range, empty inputs and inputs that are not text.

Each bundle here is assembled by hand from a tiny exported graph (``bundle.json``, the
preprocessor, the graph as the bundle's model), so the API is tested without a whole run; what it
generates is held to transformers' own ``generate`` on the same prompt ids."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from modelpress.errors import BadInputError
from modelpress.export.exporters import export_model

POSITIONS = 128  # the tiny GPT-2's n_positions (modelpress.testing.CAUSAL_FAMILIES)


def _assemble(root, graph, preprocessor, task, *, max_positions=None, label_names=()):
    """A bundle folder around ``graph``, opened with ``load`` (no manifest: never published)."""
    from modelpress.bundle import INT8_MODEL, load, write_bundle_meta
    from modelpress.fileio import graph_input_shapes
    from modelpress.modalities import get_modality

    root.mkdir(parents=True)
    shutil.copyfile(graph, root / INT8_MODEL)
    modality = get_modality(task.modality)
    modality.save_preprocessor(preprocessor, root / modality.preprocessor_dir)
    shapes = graph_input_shapes(graph)
    write_bundle_meta(
        root,
        task=task,
        input_names=list(shapes),
        max_length=32,
        max_positions=max_positions,
        label_names=label_names,
        input_shapes=shapes,
    )
    return load(root, verify=False, threads=1)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """(generator bundle, the transformers model, its tokenizer) of a tiny GPT-2 (128 positions)."""
    from modelpress.models import load_model_and_preprocessor
    from modelpress.tasks import configure_task
    from modelpress.testing import make_tiny_causal_lm

    root = tmp_path_factory.mktemp("lm")
    folder = make_tiny_causal_lm(root / "gpt2", family="gpt2")
    task = configure_task("text-generation")
    model, tokenizer = load_model_and_preprocessor(str(folder), task)
    assert model.config.n_positions == POSITIONS
    result = export_model(task, model, tokenizer, root / "model.onnx", opset=18, atol=1e-4)
    bundle = _assemble(root / "bundle", result.path, tokenizer, task, max_positions=POSITIONS)
    yield bundle, model, tokenizer
    bundle.close()


def _hf_greedy(model, ids, n):
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
        )
    return out[0, len(ids) :].tolist()


def test_a_prompt_longer_than_the_positions_is_refused_or_left_truncated(lm):
    """issue 21 case 8: a 200-token prompt for 128 positions raised onnxruntime's InvalidArgument."""
    bundle, model, tokenizer = lm
    prompt = "the cat sat on a mat " * 34  # 204 words, 206 tokens with [CLS] and [SEP]
    ids = tokenizer(prompt)["input_ids"]
    assert len(ids) > POSITIONS
    with pytest.raises(BadInputError) as err:
        bundle.generate(prompt, max_new_tokens=4)
    assert str(err.value) == (
        f"generate: the prompt is {len(ids)} tokens, more than the {POSITIONS} positions "
        "the model takes (truncate=True keeps its last tokens)"
    )
    with pytest.raises(BadInputError, match=r"prompt 1 is \d+ tokens"):
        bundle.generate(["a dog", prompt], max_new_tokens=4)
    # truncate=True: the prompt's last 128 - 6 + 1 tokens, then 6 new ones, as transformers continues them
    kept = ids[-(POSITIONS - 6 + 1) :]
    made = bundle.generator.generate(prompt, max_new_tokens=6, truncate=True, stop_token_ids=[])
    assert made == tokenizer.decode(_hf_greedy(model, kept, 6), skip_special_tokens=True)
    with pytest.raises(BadInputError, match=f"max_new_tokens=200 is more than the {POSITIONS} positions"):
        bundle.generate(prompt, max_new_tokens=200, truncate=True)


def test_new_tokens_past_the_positions_are_refused_and_the_default_is_cut_to_fit(lm):
    """issue 21 case 8: max_new_tokens past the positions silently returned fewer tokens."""
    bundle, model, tokenizer = lm
    prompt = "the cat sat on a mat " * 20  # 120 words, 122 tokens: room for 7 new ones
    ids = tokenizer(prompt)["input_ids"]
    room = POSITIONS - len(ids) + 1
    with pytest.raises(BadInputError) as err:
        bundle.generate(prompt, max_new_tokens=room + 1)
    assert str(err.value) == (
        f"generate: max_new_tokens={room + 1} does not fit: a {len(ids)}-token prompt "
        f"leaves room for {room} new tokens in the {POSITIONS} positions the model takes"
    )
    # exactly what fits: every one of them made (none silently dropped), as transformers makes them
    expected = _hf_greedy(model, ids, room)
    assert bundle.generator.generate_ids([ids], max_new_tokens=room, stop_token_ids=[]) == [expected]
    # the default (32) was never written by the user: cut to the room, not refused
    assert bundle.generate(prompt, stop_token_ids=[]) == tokenizer.decode(expected, skip_special_tokens=True)
    # the token-level API is held to the positions too
    with pytest.raises(BadInputError, match=f"take {len(ids) + room} positions, more than the {POSITIONS}"):
        bundle.generator.generate_ids([ids], max_new_tokens=room + 1)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"do_sample": True, "top_p": 0}, "generate: top_p must be in (0, 1], got 0"),
        ({"do_sample": True, "top_p": 1.5}, "generate: top_p must be in (0, 1], got 1.5"),
        ({"do_sample": True, "temperature": 0}, "generate: temperature must be > 0, got 0"),
        ({"do_sample": True, "temperature": float("nan")}, "generate: temperature must be finite, got nan"),
        ({"do_sample": True, "top_k": -1}, "generate: top_k must be ≥ 0, got -1"),
        ({"max_new_tokens": 0}, "generate: max_new_tokens must be ≥ 1, got 0"),
    ],
)
def test_sampling_options_out_of_range_are_one_line(lm, options, message):
    """issue 21 case 8: top_p=0 raised numpy's "Probabilities contain NaN"."""
    bundle = lm[0]
    with pytest.raises(BadInputError) as err:
        bundle.generate("the cat", **options)
    assert str(err.value).startswith(message)
    with pytest.raises(BadInputError):  # a stream is refused at the call, not at its first piece
        bundle.generate("the cat", stream=True, **options)


def test_valid_sampling_options_still_sample(lm):
    bundle, _, tokenizer = lm
    greedy = bundle.generate("the cat", max_new_tokens=8, stop_token_ids=[])
    # top_p at its upper bound 1 and a tiny top_p (only the most likely token) are accepted
    assert isinstance(bundle.generate("the cat", max_new_tokens=8, do_sample=True, top_p=1, seed=3), str)
    assert bundle.generate("the cat", max_new_tokens=8, do_sample=True, top_p=1e-9, stop_token_ids=[]) == greedy


def test_empty_and_non_string_prompts(lm):
    """issue 21 case 8: generate([]) is an empty list; a non-string prompt is a TypeError naming it."""
    bundle = lm[0]
    assert bundle.generate([]) == []
    for bad, message in (
        (None, "generate: prompts must be a string or a list of strings, got NoneType"),
        (3.5, "generate: prompts must be a string or a list of strings, got float"),
        ([1, 2], "generate: prompts[0] must be a string, got int 1"),
        (["a", b"b"], "generate: prompts[1] must be a string, got bytes b'b'"),
    ):
        with pytest.raises(TypeError) as err:
            bundle.generate(bad)
        assert str(err.value) == message
    with pytest.raises(TypeError, match="generate: unknown option 'top_q'"):
        bundle.generate("the cat", top_q=0.5)


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"stop_token_ids": "x"}, TypeError, "generate: stop_token_ids must be a list of token ids, got str 'x'"),
        ({"stop_token_ids": 5}, TypeError, "generate: stop_token_ids must be a list of token ids, got int 5"),
        ({"stop_token_ids": ["3"]}, TypeError, "generate: stop_token_ids[0] must be a token id (an integer), got str"),
        (
            {"stop_token_ids": [True]},
            TypeError,
            "generate: stop_token_ids[0] must be a token id (an integer), got bool",
        ),
        (
            {"stop_token_ids": [None]},
            TypeError,
            "generate: stop_token_ids[0] must be a token id (an integer), got None",
        ),
        ({"stop_token_ids": [-1]}, BadInputError, "generate: stop_token_ids[0] must be ≥ 0, got -1"),
        ({"truncate": "no"}, TypeError, "generate: truncate must be True or False, got str 'no'"),
        ({"stream": 1}, TypeError, "generate: stream must be True or False, got int 1"),
        ({"chat": "yes"}, TypeError, "generate: chat must be True or False, got str 'yes'"),
    ],
)
def test_stop_ids_and_flags_of_the_wrong_type_name_the_argument(lm, options, error, message):
    """stop_token_ids="x" raised int()'s "invalid literal for int() with base 10: 'x'", 5 "'int' object
    is not iterable", ["3"] was read as id 3; truncate="no" truncated (a truthy string), stream=1
    returned an iterator: each is now one line naming the argument, at the call."""
    bundle = lm[0]
    with pytest.raises(error) as err:
        bundle.generate("the cat", max_new_tokens=2, **options)
    assert str(err.value).startswith(message)
    if "stream" not in options:  # a stream is refused at the call too, not at its first piece
        with pytest.raises(error):
            bundle.generate("the cat", stream=True, max_new_tokens=2, **options)
    assert bundle.generate("the cat", max_new_tokens=2, stop_token_ids=(np.int64(3),)) is not None


@pytest.fixture(scope="module")
def embedder(bert_onnx, tmp_path_factory):
    from conftest import load_tiny, task_for

    _, tokenizer = load_tiny(bert_onnx.model.path)
    bundle = _assemble(tmp_path_factory.mktemp("emb") / "bundle", bert_onnx.onnx_path, tokenizer, task_for())
    yield bundle
    bundle.close()


@pytest.fixture(scope="module")
def classifier(tiny_bert_cls, tmp_path_factory):
    from conftest import NUM_LABELS, load_tiny, task_for

    task = task_for("text-classification")
    model, tokenizer = load_tiny(tiny_bert_cls.path, task)
    root = tmp_path_factory.mktemp("cls")
    result = export_model(task, model, tokenizer, root / "model.onnx", opset=18, atol=1e-4)
    bundle = _assemble(
        root / "bundle", result.path, tokenizer, task, label_names=[f"class_{i}" for i in range(NUM_LABELS)]
    )
    yield bundle
    bundle.close()


def test_no_texts_give_an_empty_result_of_the_right_shape(embedder, classifier):
    """issue 21 case 8: embed([]) had shape (0,), not (0, dim)."""
    from conftest import HIDDEN, NUM_LABELS

    assert embedder.embed(["the dog runs"]).shape == (1, HIDDEN)
    empty = embedder.embed([])
    assert empty.shape == (0, HIDDEN) and empty.dtype == np.float32
    assert np.concatenate([empty, embedder.embed("a cat")]).shape == (1, HIDDEN)  # stacks like any batch
    assert classifier.classify([]).shape == (0, NUM_LABELS)
    assert classifier.classify(iter(())).shape == (0, NUM_LABELS)
    p = classifier.classify(("a dog", "the cat sat"))
    assert p.shape == (2, NUM_LABELS) and np.allclose(p.sum(1), 1.0)


@pytest.mark.parametrize(
    "bad, message",
    [
        (None, "embed(): texts must be a string or a list of strings, got NoneType"),
        ([1, 2], "embed(): texts[0] must be a string (or a list of words), got int 1"),
        (["a dog", None], "embed(): texts[1] must be a string (or a list of words), got NoneType None"),
        (3.5, "embed(): texts must be a string or a list of strings, got float"),
        (b"a dog", "embed(): texts must be a string or a list of strings, got bytes"),
        ({"text": "a dog"}, "embed(): texts must be a string or a list of strings, got dict"),
    ],
)
def test_an_input_that_is_not_text_is_a_type_error_naming_the_argument(embedder, bad, message):
    """issue 21 case 8: these raised the tokenizer's own TypeErrors (or embedded a dict's keys)."""
    with pytest.raises(TypeError) as err:
        embedder.embed(bad)
    assert str(err.value) == message


def test_classify_names_its_own_argument_and_takes_word_lists(classifier, embedder):
    with pytest.raises(TypeError, match=r"^classify\(\): texts must be a string or a list of strings, got float$"):
        classifier.classify(3.5)
    # a list of words is one text (what the text encoder joins), for every text bundle
    assert np.allclose(embedder.embed([["the", "dog", "runs"]]), embedder.embed(["the dog runs"]), atol=1e-6)


def test_long_word_lists_embed_and_classify_as_their_own_texts(embedder, classifier):
    """Word lists longer than max_length (32) were read in windows by the encoder, and the extra
    windows' rows were handed to the next texts: embed([words_a, words_b])[1] was a window of
    words_a. Each word list is now its own text, exactly as the joined string is."""
    a, b = ["dog"] * 100, ["the", "cat", "sat"] * 40
    got = embedder.embed([a, b])
    assert got.shape == (2, 32)
    np.testing.assert_array_equal(got, embedder.embed([" ".join(a), " ".join(b)]))
    assert not np.allclose(got[0], got[1], atol=1e-3)
    probs = classifier.classify([a, b, ["a", "dog"]])
    np.testing.assert_array_equal(probs, classifier.classify([" ".join(a), " ".join(b), "a dog"]))


def test_image_classify_of_nothing_and_of_a_number(tmp_path):
    """The image bundle's side of issue 21 case 8: no images give [0, n_classes]; a number is a
    TypeError naming the argument, not "'float' object is not iterable"."""
    from modelpress.models import load_model_and_preprocessor
    from modelpress.tasks import configure_task
    from modelpress.testing import make_tiny_vision_model

    folder = make_tiny_vision_model(tmp_path / "vit", family="vit", labels=["a", "b", "c", "d"])
    task = configure_task("image-classification")
    model, processor = load_model_and_preprocessor(str(folder), task)
    result = export_model(task, model, processor, tmp_path / "model.onnx", opset=18, atol=1e-4)
    with _assemble(tmp_path / "bundle", result.path, processor, task, label_names=list("abcd")) as bundle:
        assert bundle.classify([]).shape == (0, 4)
        rgb = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
        assert bundle.classify(rgb).shape == (1, 4)
        with pytest.raises(TypeError, match=r"^classify\(\): images must be an image .* got float$"):
            bundle.classify(3.5)
        with pytest.raises(TypeError, match="got NoneType"):
            bundle.classify(None)
