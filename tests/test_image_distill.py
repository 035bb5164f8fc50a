"""Distilling image classifiers: a ViT layer subset through ``modelpress run`` (report rows teacher /
untrained subset / student fp32 / int8), a narrower ResNet from a config override trained on KL + CE,
checked against the teacher by hand, and the one-line errors of an image corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import write_recipe

from modelpress.testing import make_tiny_vision_model, write_images

LABELS = ("cat", "dog", "bird")
FAST_IMAGE_VALIDATE = {"latency_runs": 1, "warmup_runs": 0, "batch_sizes": [2], "real_workload": False, "threads": 1}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill-images")  # RGB only: the references below read them plainly
    write_images(root / "train", 36, seed=3, classes=LABELS, modes=("RGB",))
    write_images(root / "eval", 30, seed=4, classes=LABELS, modes=("RGB",))  # the fewest a gate decides on
    return root


def _logits(model_dir_or_model, processor_dir, paths):
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = model_dir_or_model
    if not isinstance(model, torch.nn.Module):
        model = AutoModelForImageClassification.from_pretrained(model).eval()
    processor = AutoImageProcessor.from_pretrained(processor_dir, backend="pil")
    pixels = processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=pixels).logits.numpy()


def _kl(teacher: np.ndarray, student: np.ndarray) -> float:
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    lt, ls = log_softmax(teacher), log_softmax(student)
    return float((np.exp(lt) * (lt - ls)).sum(-1).mean())


def test_a_vit_layer_subset_is_distilled_pressed_and_reported_beside_its_start(images, tmp_path, capsys):
    from modelpress.cli import main
    from modelpress.distill.student import build_layer_subset
    from modelpress.tasks.images import load_image_eval

    teacher = make_tiny_vision_model(
        tmp_path / "vit", family="vit", labels=LABELS, num_hidden_layers=4, initializer_range=0.2
    )
    recipe = write_recipe(
        tmp_path / "v.toml",
        {"name": "v", "teacher": str(teacher), "task": "image-classification"},
        {
            "distill": {
                "data": str(images / "train"),
                "label_field": "label",
                "num_layers": 2,
                "max_steps": 6,
                "batch_size": 12,
                "eval_fraction": 0.25,
            },
            "calibration": {"data": str(images / "train"), "num_samples": 16},
            "validate": {"eval_data": str(images / "eval"), **FAST_IMAGE_VALIDATE},
            "gate": {"max_drop": 100.0},
        },
    )
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 0  # in process: no second start
    assert "n=30 images" in capsys.readouterr().out
    root = tmp_path / "out" / "v"
    report = json.loads((root / "report.json").read_text(encoding="utf-8"))
    assert list(report["models"]) == ["teacher", "untrained-subset-fp32", "student-onnx-fp32", "int8"]
    summary = json.loads((root / "student" / "distill.json").read_text(encoding="utf-8"))
    kept = summary["kept_layers"]
    assert len(kept) == 2
    assert json.loads((root / "student" / "config.json").read_text())["num_hidden_layers"] == 2
    assert (root / "student" / "preprocessor_config.json").is_file()
    # the untrained row is the kept subset, computed here by hand against the teacher
    from transformers import AutoModelForImageClassification

    paths = list(load_image_eval(images / "eval", label2id={n: i for i, n in enumerate(LABELS)}).images)
    t = _logits(teacher, teacher, paths)
    subset = build_layer_subset(AutoModelForImageClassification.from_pretrained(teacher), kept).eval()
    agreement = float((_logits(subset, teacher, paths).argmax(-1) == t.argmax(-1)).mean())
    assert report["models"]["untrained-subset-fp32"]["metrics"]["top1_agreement"] == pytest.approx(agreement)
    assert report["models"]["student-onnx-fp32"]["metrics"]["top1_agreement"] == pytest.approx(
        float((_logits(root / "student", teacher, paths).argmax(-1) == t.argmax(-1)).mean()), abs=1e-6
    )


def test_a_narrower_resnet_from_a_config_override_learns_the_teacher(images, tmp_path):
    from transformers import AutoConfig, AutoModelForImageClassification

    from modelpress.distill.config import DistillConfig
    from modelpress.distill.pipeline import run_distillation

    teacher = make_tiny_vision_model(tmp_path / "resnet", family="resnet", labels=LABELS)
    model = AutoModelForImageClassification.from_pretrained(teacher)
    with torch.no_grad():  # a decided teacher: a random head's logits are all but uniform
        model.classifier[-1].weight.mul_(30.0)
    model.save_pretrained(teacher)
    cfg = DistillConfig(
        data=images / "train",
        epochs=12,
        batch_size=12,
        lr=5e-3,
        temperature=1.0,
        eval_fraction=0.0,
        student_config={"embedding_size": 8, "hidden_sizes": [8, 16]},
    )
    student_dir = run_distillation(cfg, teacher=str(teacher), task="image-classification", out_dir=tmp_path / "d")
    config = AutoConfig.from_pretrained(student_dir)
    assert config.hidden_sizes == [8, 16] and config.embedding_size == 8 and config.depths == [1, 1]
    assert config.id2label == {i: n for i, n in enumerate(LABELS)}
    paths = sorted((images / "train").rglob("*.*"))
    t = _logits(teacher, teacher, paths)
    torch.manual_seed(cfg.seed)  # the trainer's initialisation of the same config
    untrained = AutoModelForImageClassification.from_config(config).eval()
    before, after = _kl(t, _logits(untrained, teacher, paths)), _kl(t, _logits(student_dir, student_dir, paths))
    assert after < 0.5 * before, (before, after)


def test_image_corpus_errors_are_one_line_and_exit_2(images, tmp_path, capsys):
    from modelpress.cli import main

    teacher = make_tiny_vision_model(tmp_path / "vit", family="vit", labels=LABELS)
    zebra = tmp_path / "zoo"
    write_images(zebra, 4, classes=("cat", "zebra"))
    empty = tmp_path / "empty"
    empty.mkdir()
    for data, label_field, says in (
        (zebra, "label", "label 'zebra' is not a class of the model"),
        (empty, None, "no images"),
    ):
        distill = {"data": str(data), "num_layers": 1, **({"label_field": label_field} if label_field else {})}
        recipe = write_recipe(
            tmp_path / "d.toml",
            {"name": "d", "teacher": str(teacher), "task": "image-classification"},
            {"distill": distill},
        )
        code = main(["distill", str(recipe), "--out", str(tmp_path / "out")])
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and last.startswith("modelpress: error: distill.data: ") and says in last, last
