"""``distill.layer_selection = "agreement"``: the kept teacher layers are the subset whose untrained
copy agrees best with the teacher on corpus texts, checked against scores computed directly
with transformers; greedy elimination for large teachers; and the recipe plumbing."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

import modelpress.distill.layer_selection as layer_selection
from modelpress.distill.config import DistillConfig
from modelpress.distill.data import load_corpus, tokenize_corpus
from modelpress.distill.distributed import DistContext
from modelpress.tasks.feature_extraction import pool
from modelpress.distill.layer_selection import choose_layers
from modelpress.distill.pipeline import run_distillation
from modelpress.distill.precision import Precision
from modelpress.distill.student import build_layer_subset
from modelpress.distill.task_view import distill_view
from modelpress.testing import make_teacher, write_corpus
from modelpress.errors import BadInputError

FE_OPTIONS = {"pooling": "mean", "normalize": True}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoModel, AutoTokenizer

    root = tmp_path_factory.mktemp("layers")
    make_teacher(root / "teacher", num_layers=4, initializer_range=0.3)
    write_corpus(root / "corpus.txt", 48, seed=3)
    cfg = DistillConfig.from_dict({"data": "corpus.txt", "num_layers": 2}, base_dir=root)
    tokenizer = AutoTokenizer.from_pretrained(str(root / "teacher"))
    corpus = tokenize_corpus(tokenizer, load_corpus(cfg), max_length=64)
    teacher = AutoModel.from_pretrained(str(root / "teacher")).eval()
    texts = list(load_corpus(cfg).texts)
    return root, corpus, teacher, tokenizer, texts


def _reference_cosine(teacher, tokenizer, texts, layers) -> float:
    """Mean cosine of the untrained subset's pooled embeddings to the teacher's, straight from HF."""
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = pool(teacher(**batch).last_hidden_state, batch["attention_mask"], pooling="mean", normalize=True)
        sub = build_layer_subset(teacher, list(layers)).eval()
        out = pool(sub(**batch).last_hidden_state, batch["attention_mask"], pooling="mean", normalize=True)
    return (ref * out).sum(-1).mean().item()


def _choose(teacher, corpus, num_layers):
    spec = distill_view("feature-extraction", {"pooling": "mean", "normalize": True})
    return choose_layers(
        teacher,
        num_layers=num_layers,
        spec=spec,
        corpus=corpus,
        indices=list(range(len(corpus))),
        dist=DistContext(),
        precision=Precision("fp32", "cpu"),
        batch_size=5,
    )


def test_agreement_keeps_the_subset_closest_to_the_teacher(setup):
    _, corpus, teacher, tokenizer, texts = setup
    choice = _choose(teacher, corpus, 2)
    reference = {
        layers: _reference_cosine(teacher, tokenizer, texts, layers) for layers in itertools.combinations(range(4), 2)
    }
    assert len(choice.candidates) == 6  # every 2-of-4 subset
    for candidate in choice.candidates:
        assert candidate["cosine"] == pytest.approx(reference[tuple(candidate["layers"])], abs=1e-5)
    assert choice.layers == max(reference, key=reference.get)
    assert [c["layers"] for c in choice.candidates][0] == list(choice.layers)  # best first
    # the choice matters on this teacher: the best and worst subsets are far apart
    assert max(reference.values()) - min(reference.values()) > 0.05


def test_many_subsets_fall_back_to_greedy_elimination(setup, monkeypatch):
    _, corpus, teacher, tokenizer, texts = setup
    monkeypatch.setattr(layer_selection, "MAX_EXHAUSTIVE", 1)
    choice = _choose(teacher, corpus, 2)
    # the same greedy search on directly computed scores: drop the least useful layer, twice
    kept = (0, 1, 2, 3)
    while len(kept) > 2:
        kept = max(
            (tuple(x for x in kept if x != d) for d in kept),
            key=lambda s: _reference_cosine(teacher, tokenizer, texts, s),
        )
    assert choice.layers == kept
    assert len(choice.candidates) == 4 + 3  # subsets of 3, then of 2


def test_recipe_plumbing_and_validation(setup, tmp_path):
    root = setup[0]
    common = dict(teacher=str(root / "teacher"), task="feature-extraction", task_options=FE_OPTIONS)
    section = {"data": "corpus.txt", "num_layers": 2, "batch_size": 8, "max_steps": 2, "eval_fraction": 0.25}
    chosen = run_distillation(DistillConfig.from_dict(section, base_dir=root), out_dir=tmp_path / "a", **common)
    summary = json.loads((chosen / "distill.json").read_text())
    assert summary["kept_layers"] == summary["layer_candidates"][0]["layers"]
    assert len(summary["layer_candidates"]) == 6
    spread = run_distillation(
        DistillConfig.from_dict({**section, "layer_selection": "spread"}, base_dir=root),
        out_dir=tmp_path / "b",
        **common,
    )
    summary = json.loads((spread / "distill.json").read_text())
    assert summary["kept_layers"] == [0, 2] and summary["layer_candidates"] is None
    with pytest.raises(BadInputError, match="distill.layer_selection"):
        DistillConfig.from_dict({**section, "layer_selection": "best"}, base_dir=root)
