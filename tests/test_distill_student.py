"""Building the student (layer subsets, layer maps) and the distributed batch sampler, exactly."""

from __future__ import annotations

import pytest
import torch

from modelpress.distill.config import DistillConfig
from modelpress.distill.data import Corpus, split_indices, tokenize_corpus
from modelpress.distill.sampler import DistributedBatchSampler
from modelpress.distill.student import build_layer_subset, build_student, default_layer_map, evenly_spaced_layers
from modelpress.distill.task_view import distill_view
from modelpress.testing import make_teacher, random_sentences
from modelpress.errors import BadInputError


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher"), num_layers=6)


def test_layer_choice_and_default_map():
    assert evenly_spaced_layers(6, 3) == (0, 2, 4)
    assert evenly_spaced_layers(12, 4) == (0, 3, 6, 9)
    assert evenly_spaced_layers(6, 6) == (0, 1, 2, 3, 4, 5)
    with pytest.raises(BadInputError, match="distill.num_layers"):
        evenly_spaced_layers(6, 7)
    assert default_layer_map(student_layers=3, teacher_layers=6, kept=(0, 2, 4)) == (1, 3, 5)
    assert default_layer_map(student_layers=3, teacher_layers=6, kept=(0, 1, 5)) == (0, 4, 5)
    assert default_layer_map(student_layers=2, teacher_layers=6) == (2, 5)


def test_layer_subset_copies_exactly_the_chosen_teacher_layers(teacher_dir, tmp_path):
    from transformers import AutoModel

    teacher = AutoModel.from_pretrained(teacher_dir).eval()
    teacher.requires_grad_(False)
    student = build_layer_subset(teacher, [0, 2, 5])
    assert student.config.num_hidden_layers == 3 and teacher.config.num_hidden_layers == 6
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for new, old in enumerate([0, 2, 5]):
        layer_keys = [k for k in s_state if k.startswith(f"encoder.layer.{new}.")]
        assert layer_keys
        for key in layer_keys:
            assert torch.equal(s_state[key], t_state[key.replace(f"layer.{new}.", f"layer.{old}.", 1)])
    assert not any(k.startswith("encoder.layer.3.") for k in s_state)
    for key in ("embeddings.word_embeddings.weight", "pooler.dense.weight"):
        assert torch.equal(s_state[key], t_state[key])
        assert s_state[key].data_ptr() != t_state[key].data_ptr()  # a copy, not shared
    assert all(p.requires_grad for p in student.parameters())
    # the subset computes: embeddings → teacher layers 0, 2, 5 (checked by running the teacher's own layers)
    ids = torch.tensor([[2, 7, 9, 11, 3]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        hidden = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[0]
        for i in (0, 2, 5):
            hidden = teacher.encoder.layer[i](hidden, attention_mask=None)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        got = student.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, hidden, rtol=1e-5, atol=1e-5)
    # it saves as a normal 3-layer HF folder
    student.save_pretrained(tmp_path / "s")
    reloaded = AutoModel.from_pretrained(tmp_path / "s").eval()
    assert reloaded.config.num_hidden_layers == 3
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids, attention_mask=mask).last_hidden_state, got)


def test_build_student_variants_and_errors(teacher_dir):
    from transformers import AutoModel, AutoTokenizer

    spec = distill_view("feature-extraction", {"pooling": "mean", "normalize": True})
    teacher = AutoModel.from_pretrained(teacher_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    cfg = DistillConfig(data="x.txt", num_layers=2, dropout=0.0)
    built = build_student(cfg, teacher, spec, tokenizer=tokenizer)
    assert built.kept_layers == (0, 3) and built.layer_map == (2, 5) and built.pretrained
    assert not built.model.get_input_embeddings().weight.requires_grad  # freeze_embeddings default
    assert all(m.p == 0.0 for m in built.model.modules() if isinstance(m, torch.nn.Dropout))
    assert built.model.config.hidden_dropout_prob == teacher.config.hidden_dropout_prob  # saved config untouched
    small = build_student(
        DistillConfig(
            data="x.txt", student_config={"hidden_size": 16, "num_hidden_layers": 2, "intermediate_size": 32}
        ),
        teacher,
        spec,
        tokenizer=tokenizer,
    )
    assert small.model.config.hidden_size == 16 and not small.pretrained and small.layer_map == (2, 5)
    assert small.model.get_input_embeddings().weight.requires_grad  # random embeddings are trained
    with pytest.raises(BadInputError, match="distill.layers"):
        build_student(DistillConfig(data="x.txt", layers=(0, 6)), teacher, spec, tokenizer=tokenizer)
    with pytest.raises(BadInputError, match="distill.layer_map"):
        build_student(DistillConfig(data="x.txt", layers=(0, 1), layer_map=(1,)), teacher, spec, tokenizer=tokenizer)
    with pytest.raises(BadInputError, match="distill.student_config.hidden_sizes"):
        build_student(
            DistillConfig(data="x.txt", student_config={"hidden_sizes": 3}), teacher, spec, tokenizer=tokenizer
        )


def _sampler(n, *, world, rank, accum, batch=8, group=True, seed=3):
    lengths = [1 + (i * 7) % 13 for i in range(n)]
    return DistributedBatchSampler(
        list(range(100, 100 + n)),
        [0] * 100 + lengths,
        global_batch=batch,
        grad_accum=accum,
        world_size=world,
        rank=rank,
        seed=seed,
        group_by_length=group,
    )


@pytest.mark.parametrize("group", [True, False])
def test_sampler_global_batches_do_not_depend_on_processes_or_accumulation(group):
    n = 90
    single = _sampler(n, world=1, rank=0, accum=1, group=group)
    assert single.steps_per_epoch == 11  # 90 // 8, the remainder is dropped
    for epoch in (0, 1):
        expected = single.global_batches(epoch)
        for world, accum in ((1, 2), (2, 1), (2, 2), (4, 2)):
            per_rank = []
            for rank in range(world):
                s = _sampler(n, world=world, rank=rank, accum=accum, group=group)
                s.set_epoch(epoch)
                per_rank.append(list(s))
                assert len(per_rank[-1]) == len(s) == 11 * accum
            for step, batch in enumerate(expected):
                got = [i for rank in range(world) for m in range(accum) for i in per_rank[rank][step * accum + m]]
                assert got == batch
    assert single.global_batches(0) != single.global_batches(1)  # set_epoch reshuffles
    assert sorted(i for b in single.global_batches(0) for i in b) != list(range(100, 188))  # shuffled


def test_sampler_resumes_mid_epoch_and_groups_lengths():
    s = _sampler(200, world=1, rank=0, accum=1, batch=10)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start_step=7)
    assert list(s) == full[7:]
    lengths = {100 + i: 1 + (i * 7) % 13 for i in range(200)}
    padded = sum(max(lengths[i] for i in b) * len(b) for b in full)
    plain = _sampler(200, world=1, rank=0, accum=1, batch=10, group=False)
    plain.set_epoch(2)
    padded_plain = sum(max(lengths[i] for i in b) * len(b) for b in plain)
    assert padded < 0.75 * padded_plain
    with pytest.raises(BadInputError, match="distill.batch_size"):
        _sampler(200, world=3, rank=0, accum=1, batch=10)


def test_corpus_tokenization_split_and_collate(teacher_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    texts = random_sentences(50)
    corpus = tokenize_corpus(tokenizer, Corpus(texts=tuple(texts), labels=tuple(range(50))), max_length=6)
    assert len(corpus) == 50 and max(corpus.lengths) == 6
    batch = corpus.collate([3, 1])
    assert batch["input_ids"].shape[0] == 2 and batch["labels"].tolist() == [3, 1]
    assert batch["index"].tolist() == [3, 1]
    for row, i in enumerate([3, 1]):
        n = corpus.lengths[i]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert batch["input_ids"][row, :n].tolist() == list(corpus.features["input_ids"][i])
    train, held = split_indices(50, 0.1, seed=0)
    assert len(held) == 5 and sorted(train + held) == list(range(50))
    assert split_indices(50, 0.1, seed=0) == (train, held)
    assert split_indices(50, 0.0, seed=0) == (list(range(50)), [])
