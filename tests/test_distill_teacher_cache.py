"""The teacher-target cache: per-token hidden states cached once (fp16, no padding) must give the
same targets as running the teacher live, for any batch composition, and fall back to the live
teacher when the cache would be larger than ``cache_teacher_max_mb``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelpress.distill.config import DistillConfig
from modelpress.distill.data import load_corpus, tokenize_corpus
from modelpress.distill.distributed import DistContext
from modelpress.distill.precision import Precision
from modelpress.distill.task_view import distill_view
from modelpress.distill.teacher import TeacherTargets, load_teacher
from modelpress.testing import make_teacher, write_corpus

LAYERS = (1, 3)  # the teacher layers a 2-layer student of a 4-layer teacher imitates


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("cache")
    make_teacher(root / "teacher", num_layers=4)
    write_corpus(root / "corpus.txt", 40)
    spec = distill_view("feature-extraction", {"pooling": "mean", "normalize": True})
    cfg = DistillConfig.from_dict({"data": "corpus.txt", "num_layers": 2}, base_dir=root)
    tokenizer = AutoTokenizer.from_pretrained(str(root / "teacher"))
    corpus = tokenize_corpus(tokenizer, load_corpus(cfg), max_length=64)
    return root, spec, corpus


def _targets(root: Path, spec, layers=LAYERS) -> TeacherTargets:
    return TeacherTargets(
        load_teacher(str(root / "teacher"), spec),
        spec=spec,
        precision=Precision("fp32", "cpu"),
        device=torch.device("cpu"),
        need_hidden=True,
        need_attentions=False,
        hidden_layers=layers,
    )


def test_cached_hidden_states_equal_the_live_teacher(setup, tmp_path):
    root, spec, corpus = setup
    targets = _targets(root, spec)
    targets.build_cache(
        corpus, path=tmp_path / "cache.safetensors", fingerprint="f", dist=DistContext(), batch_size=7, max_token_mb=1.0
    )
    assert targets.token_cache is not None
    assert targets.token_cache.values.shape == (sum(corpus.lengths), 2, 32)
    assert targets.token_cache.values.dtype == torch.float16
    # a batch mixing long and short rows, in an order the cache was not built in
    batch = corpus.collate([5, 0, 33, 12, 21])
    cached = targets.for_batch(batch)
    live = targets.compute(batch)
    assert cached.hidden_states[0] is None and cached.hidden_states[2] is None  # layers no loss reads
    real = batch["attention_mask"].bool()
    for layer in LAYERS:
        got, want = cached.hidden_states[layer], live.hidden_states[layer]
        assert got.shape == want.shape
        assert (got[real] - want[real]).abs().max().item() <= 2e-3 * want[real].abs().max().item()
        assert got[~real].abs().max().item() == 0.0  # padding stays zero
    assert torch.allclose(cached.sentence, live.sentence, atol=1e-6)

    # a second process (a resumed run) reads the same targets back from disk
    again = _targets(root, spec)
    again.build_cache(
        corpus, path=tmp_path / "cache.safetensors", fingerprint="f", dist=DistContext(), batch_size=3, max_token_mb=1.0
    )
    assert torch.equal(again.token_cache.values, targets.token_cache.values)
    assert torch.equal(again.token_cache.offsets, targets.token_cache.offsets)


def test_cache_over_its_size_limit_keeps_only_sentence_targets(setup, tmp_path):
    root, spec, corpus = setup
    targets = _targets(root, spec)
    targets.build_cache(
        corpus, path=tmp_path / "cache.safetensors", fingerprint="f", dist=DistContext(), batch_size=8, max_token_mb=0.0
    )
    assert targets.token_cache is None and targets.cache is not None
    batch = corpus.collate([1, 2, 3])
    out = targets.for_batch(batch)  # token-level targets come from the live teacher
    assert all(h is not None for h in out.hidden_states) and len(out.hidden_states) == 4
    # a cache written for other layers is not reused for these
    other = _targets(root, spec, layers=(0, 3))
    other.build_cache(
        corpus, path=tmp_path / "cache.safetensors", fingerprint="f", dist=DistContext(), batch_size=8, max_token_mb=1.0
    )
    assert other.token_cache is not None and other.token_cache.layers == (0, 3)


def test_states_beyond_fp16_range_are_cached_in_fp32(setup, tmp_path):
    root, spec, corpus = setup
    targets = _targets(root, spec)
    with torch.no_grad():  # layer 3's output now reaches ~1e6, beyond fp16's 65504
        targets.model.encoder.layer[3].output.LayerNorm.weight.mul_(1e5)
    targets.build_cache(
        corpus, path=tmp_path / "cache.safetensors", fingerprint="f", dist=DistContext(), batch_size=8, max_token_mb=1.0
    )
    assert targets.token_cache.values.dtype == torch.float32
    batch = corpus.collate([3, 9, 4])
    cached, live = targets.for_batch(batch), targets.compute(batch)
    real = batch["attention_mask"].bool()
    assert live.hidden_states[3][real].abs().max().item() > 1e5
    got, want = cached.hidden_states[3][real], live.hidden_states[3][real]
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()  # no fp16 rounding, no inf
