"""The [distill] recipe section: parsing, defaults, and errors that name the offending key."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelpress.distill.config import DistillConfig, LossWeights
from modelpress.distill.task_view import distill_view
from modelpress.errors import BadInputError


def test_minimal_section_gets_documented_defaults_and_resolves_data(tmp_path):
    (tmp_path / "corpus.txt").write_text("a text\n", encoding="utf-8")
    cfg = DistillConfig.from_dict({"data": "corpus.txt", "layers": [0, 2, 4]}, base_dir=tmp_path)
    assert cfg.data == (tmp_path / "corpus.txt").resolve()
    assert cfg.layers == (0, 2, 4)
    assert (cfg.batch_size, cfg.grad_accum, cfg.lr, cfg.epochs, cfg.precision) == (64, 1, 5e-4, 3, "auto")
    assert cfg.losses == LossWeights()


def test_full_section_round_trips_through_json(tmp_path):
    section = {
        "enabled": True,
        "data": "/abs/data.jsonl",
        "text_field": "sentence",
        "label_field": "label",
        "num_samples": 1000,
        "max_length": 64,
        "num_layers": 3,
        "layer_map": [1, 3, 5],
        "dropout": 0.1,
        "freeze_embeddings": False,
        "epochs": 2,
        "max_steps": 50,
        "batch_size": 32,
        "grad_accum": 2,
        "lr": 5e-5,
        "weight_decay": 0.0,
        "warmup_ratio": 0.1,
        "max_grad_norm": 0.5,
        "temperature": 4,
        "losses": {"kl": 1.0, "ce": 0.5, "hidden_mse": 2},
        "precision": "BF16",
        "group_by_length": False,
        "eval_fraction": 0.1,
        "eval_every": 10,
        "save_every": 5,
        "cache_teacher": False,
        "seed": 7,
    }
    cfg = DistillConfig.from_dict(section, base_dir=tmp_path)
    assert cfg.data == Path("/abs/data.jsonl")
    assert cfg.precision == "bf16" and cfg.temperature == 4.0
    assert cfg.losses == LossWeights(kl=1.0, ce=0.5, hidden_mse=2.0)
    again = DistillConfig.from_dict({k: v for k, v in cfg.to_json_dict().items()}, base_dir=tmp_path)
    assert again == cfg


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"data": "x.txt", "layers": [0], "learning_rate": 1e-4}, "distill.learning_rate"),
        ({"data": "x.txt", "layers": [0], "lr": "fast"}, "distill.lr"),
        ({"data": "x.txt", "layers": [0], "lr": -1.0}, "distill.lr"),
        ({"data": "x.txt", "layers": [0], "batch_size": 0}, "distill.batch_size"),
        ({"data": "x.txt", "layers": [0], "batch_size": 8.5}, "distill.batch_size"),
        ({"data": "x.txt", "layers": [0], "cache_teacher": "yes"}, "distill.cache_teacher"),
        ({"data": "x.txt", "layers": [2, 0]}, "distill.layers"),
        ({"data": "x.txt", "layers": [0], "num_layers": 3}, "distill.num_layers"),
        ({"data": "x.txt"}, "distill.layers"),
        ({"layers": [0]}, "distill.data"),
        ({"data": "x.txt", "layers": [0], "precision": "fp8"}, "distill.precision"),
        ({"data": "x.txt", "layers": [0], "eval_fraction": 1.0}, "distill.eval_fraction"),
        ({"data": "x.txt", "layers": [0], "losses": {"mse": 1.0}}, "distill.losses.mse"),
        ({"data": "x.txt", "layers": [0], "losses": {"kl": -1}}, "distill.losses.kl"),
        ({"data": "x.txt", "layers": [0], "student_config": {}}, "distill.student_config"),
    ],
)
def test_bad_sections_raise_bad_input_naming_the_key(tmp_path, section, key):
    with pytest.raises(BadInputError, match=key.replace(".", r"\.")):
        DistillConfig.from_dict(section, base_dir=tmp_path)


def test_disabled_section_needs_nothing_else(tmp_path):
    assert DistillConfig.from_dict({"enabled": False}, base_dir=tmp_path).enabled is False


def test_student_folder_relative_to_recipe_becomes_absolute(tmp_path):
    (tmp_path / "small").mkdir()
    cfg = DistillConfig.from_dict({"data": "x.txt", "student": "small"}, base_dir=tmp_path)
    assert cfg.student == str((tmp_path / "small").resolve())
    hub = DistillConfig.from_dict({"data": "x.txt", "student": "org/tiny-bert"}, base_dir=tmp_path)
    assert hub.student == "org/tiny-bert"


def test_task_defaults_and_inapplicable_losses():
    fe, tc = distill_view("feature-extraction"), distill_view("text-classification")
    assert fe.resolve_weights(LossWeights(), has_labels=False) == {
        "embedding_mse": 1.0,
        "embedding_cos": 1.0,
        "similarity_mse": 0.0,
        "kl": 0.0,
        "ce": 0.0,
        "hidden_mse": 0.0,
        "attention_kl": 0.0,
    }
    weights = tc.resolve_weights(LossWeights(hidden_mse=0.5), has_labels=True)
    assert (weights["kl"], weights["ce"], weights["hidden_mse"]) == (1.0, 1.0, 0.5)
    with pytest.raises(BadInputError, match=r"distill\.losses\.kl"):
        fe.resolve_weights(LossWeights(kl=1.0), has_labels=False)
    with pytest.raises(BadInputError, match=r"distill\.losses\.similarity_mse"):
        tc.resolve_weights(LossWeights(similarity_mse=1.0), has_labels=True)
    with pytest.raises(BadInputError, match=r"distill\.losses\.ce"):
        tc.resolve_weights(LossWeights(ce=1.0), has_labels=False)
    with pytest.raises(BadInputError, match="every loss weight is 0"):
        fe.resolve_weights(LossWeights(embedding_mse=0, embedding_cos=0), has_labels=False)
    with pytest.raises(BadInputError, match="task .fill-mask. is not known"):
        distill_view("fill-mask")


def test_precision_resolution_on_cpu():
    import torch

    from modelpress.distill.precision import cpu_has_native_bf16, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).name == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp32", cpu).dtype is None
    bf16 = resolve_precision("bf16", cpu)
    assert bf16.dtype == torch.bfloat16 and not bf16.needs_grad_scaler
    with bf16.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(BadInputError, match="distill.precision"):
        resolve_precision("fp16", cpu)
