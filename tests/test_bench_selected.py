"""The benches' selected row (bench/selected.py), its docs rendering (bench/docs_figures.py) and the
bar checker (bench/bars.py): ratios against hand-computed medians, the record of a real run's
selection opened through ``load``, and every bar's verdict on a small fake results folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FAST_CALIBRATION, FAST_VALIDATE, write_recipe

from bench import bars, docs_figures
from bench.selected import SELECTED, open_selected, selected_record, shape_ratios
from modelpress.validate.select import SLOW_ENV


def _rounds(**medians: float) -> dict[str, list[float]]:
    """Per-round seconds around each median (paired rounds share a slowdown)."""
    rng = np.random.default_rng(3)
    shared = rng.lognormal(0.0, 0.05, size=9)
    return {n: list(m * shared * rng.lognormal(0.0, 0.01, size=9)) for n, m in medians.items()}


def test_shape_ratios_are_the_ratio_of_medians_to_the_fastest_peer_and_ort_fp32():
    times = _rounds(**{SELECTED: 0.8, "ort-fp32": 1.0, "openvino-fp32": 0.9, "modelpress-int8": 0.5})
    r = shape_ratios(times)
    # ours (modelpress-int8) is faster, but it is no peer: the fastest peer is OpenVINO fp32
    assert r["vs_fastest_peer"]["peer"] == "openvino-fp32"
    want = np.median(times[SELECTED]) / np.median(times["openvino-fp32"])
    assert r["vs_fastest_peer"]["value"] == pytest.approx(want, abs=1e-4)
    fp32 = r["vs_ort_fp32"]
    assert fp32["value"] == pytest.approx(np.median(times[SELECTED]) / np.median(times["ort-fp32"]), abs=1e-4)
    assert fp32["ci95"][0] <= fp32["value"] <= fp32["ci95"][1] < 1.0
    assert set(r["vs"]) == {"ort-fp32", "openvino-fp32", "modelpress-int8"}


def test_a_bundle_without_a_selection_is_recorded_as_not_measured(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"models": {}}))
    record = selected_record(tmp_path, {"b32": _rounds(**{SELECTED: 1.0, "ort-fp32": 1.0})})
    assert record["candidate"] is None and "no selection" in record["note"]
    assert "not measured" in docs_figures.selected_line(record)
    assert bars.not_slower_than_fp32(record)[0] == bars.NOT_MEASURED


def test_the_selected_row_is_the_runs_default_as_load_opens_it(tiny_bert, data_files, tmp_path, monkeypatch):
    """A run whose int8 is slowed on purpose ships fp32: the bench's row opens that, not the int8 file."""
    from modelpress.cli import main

    monkeypatch.setenv(SLOW_ENV, "int8=40")
    recipe = write_recipe(
        tmp_path / "s.toml",
        {"name": "s", "teacher": str(tiny_bert.path)},
        {
            "calibration": {"data": str(data_files.calibration_txt), **FAST_CALIBRATION},
            "validate": {"eval_data": str(data_files.pairs_jsonl), **FAST_VALIDATE, "latency_runs": 6},
            "gate": {"max_drop": 50.0},
            "select": {"shape": "b2xs16"},
        },
    )
    assert main(["-q", "run", str(recipe), "--out", str(tmp_path / "out")]) == 0
    bundle = tmp_path / "out" / "s"
    monkeypatch.delenv(SLOW_ENV)
    with open_selected(bundle, threads=1) as model:
        assert model.name == SELECTED and model.runner.model_path.name == "model.onnx"
        assert model.predict_batch(model.encode(["a text", "another one"])).shape[0] == 2
    record = selected_record(bundle, {"b2xs16": _rounds(**{SELECTED: 1.0, "ort-fp32": 1.02})})
    report = json.loads((bundle / "report.json").read_text())["selection"]
    assert record["candidate"] == "onnx-fp32" == report["chosen"] and record["reason"] == report["reason"]
    assert record["selection_shape"] == "b2xs16" and record["runtime"] == "onnxruntime"
    assert record["press_vs_ort_fp32"] == {"value": 1.0, "ci95": [1.0, 1.0]}  # the reference ÷ itself
    line = docs_figures.selected_line(record)
    assert line.startswith("Selected artifact (what `load(dir)` opens): `onnx-fp32` — chose onnx-fp32:")


def _sel(candidate: str, shape: str, ratios: dict, press: float | None = None) -> dict:
    def r(v):
        return {"value": v, "ci95": [round(v - 0.02, 3), round(v + 0.02, 3)]}

    out = {}
    for s, row in ratios.items():
        vs = {n: r(v) for n, v in row.items()}
        peers = {n: v for n, v in row.items() if not n.startswith("modelpress")}
        fastest = max(peers, key=peers.get)  # the fastest peer: the largest selected ÷ peer ratio
        out[s] = {"vs": vs, "vs_fastest_peer": {"peer": fastest, **vs[fastest]}, "vs_ort_fp32": vs["ort-fp32"]}
    return {
        "candidate": candidate,
        "runtime": "openvino",
        "reason": f"chose {candidate}: because",
        "selection_shape": shape,
        "press_vs_ort_fp32": None if press is None else r(press),
        "ratios": out,
    }


AVX2 = {"cpu": "Test AVX2", "family_model": "23/49", "kernel_flags": ["avx2", "fma"], "int8_gemm_saturates": True}
VNNI = {"cpu": "Test VNNI", "kernel_flags": ["avx2", "avx512_vnni"], "microarchitecture": "zen4", "target": "x"}


@pytest.fixture
def results(tmp_path):
    """A fake results folder: a MiniLM run with a selection (AVX2), one without (VNNI), a vision run."""
    minilm = {
        "machine": AVX2,
        "threads": {
            "2": {
                "pytorch-fp32": {"spearman": 82.00, "b32_median_ms": 900.0},
                "ort-fp32": {"b32_median_ms": 700.0},
                "modelpress-int8": {"b32_median_ms": 500.0},  # 1.4x ORT fp32's throughput
                SELECTED: {"spearman": 81.95, "b32_median_ms": 500.0},
            }
        },
        "selected": _sel(
            "int8",
            "workload",
            {
                "b32xs128": {"ort-fp32": 0.71, "openvino-fp32": 0.88, "openvino-nncf-int8": 0.5},
                "workload": {"ort-fp32": 0.75, "openvino-fp32": 0.93, "openvino-nncf-int8": 0.6},
            },
        ),
    }
    old_vnni = {
        "machine": VNNI,
        "threads": {"2": {"ort-fp32": {"b32_median_ms": 600.0}, "modelpress-int8": {"b32_median_ms": 500.0}}},
    }
    vision = {
        "machine": AVX2,
        "models": {
            # the ResNet's selection shape is the workload the bench does not time: the press's figure
            "resnet": {
                "selected": _sel(
                    "int8-openvino", "workload", {"b32": {"ort-fp32": 0.5, "openvino-nncf-int8": 0.97}}, 0.87
                )
            },
            # a ViT whose selected artifact is slower than ORT fp32 beyond noise
            "vit": {"selected": _sel("int8", "b32xs32", {"b32": {"ort-fp32": 1.08, "openvino-fp32": 0.9}})},
        },
    }
    for name, data in (("bench.json", minilm), ("bench_vnni.json", old_vnni), ("vision.json", vision)):
        (tmp_path / name).write_text(json.dumps(data))
    (tmp_path / "distill.json").write_text(json.dumps({"stsb_test_spearman": {}}))  # a kind without bars
    return tmp_path


def _verdicts(found: list) -> dict[tuple[str, str, str], str]:
    return {(b.source, b.model, b.bar): b.verdict for b in found}


def test_every_bar_reads_its_figure_from_the_results(results):
    v = _verdicts(bars.check(results))
    fp32 = "default no slower than ORT fp32 at its selection shape"
    m = {bar: verdict for (src, _, bar), verdict in v.items() if src == "bench.json"}
    assert m[fp32] == bars.MET
    assert m["selected ≤ 0.9× the fastest peer at b32xs128"] == bars.MET  # 0.88 ÷ OpenVINO fp32
    assert m["selected ≤ 0.9× the fastest peer at workload"] == bars.NOT_MET  # 0.93
    assert m["selected STS-B Spearman drop ≤ 0.1 points"] == bars.MET  # 0.05
    assert m["our ORT int8 ≥ 1.35× ORT fp32's throughput at b32"] == bars.MET  # 1.40
    assert m["VNNI/AMX: selected ≤ 0.9× OpenVINO + NNCF int8 at b32xs128"] == bars.NOT_APPLICABLE
    old = {bar: verdict for (src, _, bar), verdict in v.items() if src == "bench_vnni.json"}
    assert old[fp32] == bars.NOT_MEASURED and old["selected STS-B Spearman drop ≤ 0.1 points"] == bars.NOT_MEASURED
    assert old["our ORT int8 ≥ 1.35× ORT fp32's throughput at b32"] == bars.NOT_MET  # 1.2
    assert old["VNNI/AMX: selected ≤ 0.9× OpenVINO + NNCF int8 at workload"] == bars.NOT_MEASURED
    assert v[("vision.json", "ResNet", fp32)] == bars.MET  # from the press's 0.87
    assert v[("vision.json", "ResNet", "selected ≤ 0.95× `openvino-nncf-int8` at b32")] == bars.NOT_MET
    assert v[("vision.json", "ViT", fp32)] == bars.NOT_MET  # 1.08 [1.06, 1.10]: wholly above 1
    assert v[("vision.json", "ViT", "selected ≤ 0.95× `openvino-fp32` at b32")] == bars.MET
    assert not any(src == "distill.json" for src, _, _ in v)


def test_the_fp32_floor_allows_noise_as_the_selection_does():
    sel = _sel("int8", "b32", {"b32": {"ort-fp32": 1.01}})
    verdict, detail = bars.not_slower_than_fp32(sel)
    assert verdict == bars.MET and "within noise" in detail and "[0.990, 1.030]" in detail
    sel["ratios"] = {}  # the bench did not time the selection shape, and the press has no figure
    assert bars.not_slower_than_fp32(sel)[0] == bars.NOT_MEASURED


def test_the_bar_report_names_each_file_and_its_machine(results, capsys):
    assert bars.main(["--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "bench_vnni.json (machine: Test VNNI, archspec zen4 (target x), avx2 avx512_vnni)" in out
    assert "vision.json (machine: Test AVX2 23/49, avx2 fma)" in out
    assert "not met        ViT: default no slower than ORT fp32" in out


def test_the_docs_render_the_selected_row_and_its_ratios(results, monkeypatch):
    monkeypatch.setattr(docs_figures, "ROOT", results)
    text = docs_figures.render(results / "bench.json")
    row = next(line for line in text.splitlines() if line.startswith("| **modelpress selected**"))
    assert "81.95" in row
    assert "`int8` — chose int8: because." in text
    assert "b32xs128: ÷ fastest peer (`openvino-fp32`) 0.880× [0.860, 0.900], ÷ ORT fp32 0.710×" in text
    vnni = docs_figures.render(results / "bench_vnni.json")
    assert "Selected artifact (what `load(dir)` opens): not measured in this file." in vnni
    assert "archspec `zen4` (target `x`)" in vnni
    vision = docs_figures.render(results / "vision.json")
    assert vision.count("Selected artifact") == 2 and "b32: ÷ fastest peer (`openvino-nncf-int8`) 0.970×" in vision


def test_the_machine_record_names_the_cpu_by_archspec_and_its_target_level():
    from bench import machine
    from modelpress.runtimes.cpu import cpu_flags
    from modelpress.runtimes.target import host_target

    m = machine()
    assert m["target"] == host_target().name and m["microarchitecture"] == host_target().microarchitecture
    assert m["flags"] == sorted(cpu_flags()) and set(m["kernel_flags"]) <= set(m["flags"])
