"""Real images end to end: a ResNet trained here for a few epochs on scikit-learn's bundled
handwritten digits (``bench.digits``; the demo trains the same one longer) goes through
``modelpress run``; its int8 model must keep the fp32 accuracy (gate 0.5 points) and agree with
fp32 on ≥ 99 % of the 600 held-out scans, and the report's accuracies match PyTorch computed here."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import write_recipe

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None, reason="scikit-learn (the digit scans) is not installed"
)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from bench.digits import prepare

    root = tmp_path_factory.mktemp("digits")
    prepare(root, ["resnet"], epochs=4)
    return root


def test_a_resnet_trained_on_real_digits_keeps_its_accuracy_in_int8(digits, tmp_path, capsys):
    import torch
    from transformers import AutoModelForImageClassification

    from modelpress.cli import main
    from modelpress.modalities.image import ImageEncoder
    from modelpress.modalities import get_modality
    from modelpress.tasks.images import load_image_eval

    recipe = write_recipe(
        tmp_path / "r.toml",
        {"name": "digits", "teacher": str(digits / "resnet"), "task": "image-classification"},
        {
            "calibration": {"data": str(digits / "calib"), "num_samples": 64},
            "validate": {
                "eval_data": str(digits / "test"),
                "batch_sizes": [32],
                "latency_runs": 1,
                "warmup_runs": 0,
                "real_workload": False,
                "threads": 2,
            },
            "gate": {"max_drop": 0.5},
        },
    )
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err[-3000:]
    report = json.loads((tmp_path / "out" / "digits" / "report.json").read_text(encoding="utf-8"))
    assert report["eval"]["format"] == "images" and report["gate"]["metric"] == "accuracy"
    int8 = report["models"]["int8"]["metrics"]
    assert int8["top1_agreement"] >= 0.99 and report["gate"]["passed"], int8

    model = AutoModelForImageClassification.from_pretrained(digits / "resnet").eval()
    es = load_image_eval(digits / "test", label2id=model.config.label2id)
    encoder = ImageEncoder(get_modality("image").load_preprocessor(str(digits / "resnet")))
    with torch.no_grad():
        pred = (
            model(pixel_values=torch.from_numpy(encoder.encode(list(es.examples)).feed["pixel_values"]))
            .logits.argmax(-1)
            .numpy()
        )
    accuracy = float(np.mean(pred == np.asarray(es.labels)))
    assert accuracy > 0.9  # it learned the digits
    assert report["models"]["teacher"]["metrics"]["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert abs(int8["accuracy"] - accuracy) <= 0.005
