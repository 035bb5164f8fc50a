"""The manual: README.md stays short, every benchmark figure in docs/ and the README is generated from
its ``bench/results/*.json`` (bench/docs_figures.py) with its machine and date, and the mkdocs site
builds with --strict (every internal link and anchor valid)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

from bench import docs_figures


def test_readme_is_at_most_300_lines():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; the reference belongs in docs/"


def test_committed_tables_match_their_json():
    """Regenerate every table in memory: a JSON edited (or a table edited by hand) without `make docs`
    fails here, naming the file."""
    differ = [
        str(path.relative_to(REPO))
        for path, text in docs_figures.expected_files().items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    assert not differ, f"stale generated docs (run `make docs`): {differ}"
    made = {p.name for p in (REPO / "docs" / "_generated").glob("*.md")}
    assert made == {f"{p.stem}.md" for p in docs_figures.RESULTS.glob("*.json")} | {"summary.md"}


def test_every_generated_table_names_its_source_machine_and_date():
    for path in sorted(docs_figures.RESULTS.glob("*.json")):
        text = (REPO / "docs" / "_generated" / f"{path.stem}.md").read_text(encoding="utf-8")
        provenance = text.splitlines()[1]
        assert f"`bench/results/{path.name}`" in provenance
        assert "measured 20" in provenance and "machine:" in provenance, provenance


def test_every_generated_table_is_included_in_a_page():
    pages = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "docs").glob("*.md"))
    missing = [p.name for p in (REPO / "docs" / "_generated").glob("*.md") if f'"_generated/{p.name}"' not in pages]
    assert not missing, f"generated but shown on no page: {missing}"


def test_a_table_shows_its_json_figures_and_machine(tmp_path, monkeypatch):
    """An encoder result with known values renders those values, its CPU, family/model, flags and the
    JSON's own measured date; changing one figure in the JSON changes the table."""
    result = {
        "measured": "2031-01-02",
        "machine": {"cpu": "Test CPU 9000", "family_model": "25/17", "kernel_flags": ["avx2", "avx512_vnni"]},
        "threads": {
            "2": {
                "pytorch-fp32": {"b32_median_ms": 500.0, "b32_vs_pytorch": 1.0, "spearman": 82.03},
                "modelpress-int8": {"b32_median_ms": 123.4, "b32_vs_pytorch": 0.2468, "spearman": 81.97},
            }
        },
    }
    path = tmp_path / "bench_test.json"
    path.write_text(json.dumps(result))
    monkeypatch.setattr(docs_figures, "ROOT", tmp_path)
    text = docs_figures.render(path)
    assert "measured 2031-01-02" in text
    assert "CPU `Test CPU 9000`, family/model 25/17, flags `avx2 avx512_vnni`" in text
    row = next(line for line in text.splitlines() if line.startswith("| **modelpress int8, ONNX Runtime**"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "123.4" and cells[4] == "0.247" and cells[9] == "81.97"
    result["threads"]["2"]["modelpress-int8"]["b32_median_ms"] = 130.0
    path.write_text(json.dumps(result))
    assert "| 130.0 |" in docs_figures.render(path) and "| 123.4 |" not in docs_figures.render(path)


def test_a_result_file_of_an_unknown_kind_is_refused(tmp_path):
    path = tmp_path / "new_bench.json"
    path.write_text(json.dumps({"something": 1}))
    with pytest.raises(SystemExit, match="no renderer"):
        docs_figures.render(path)


def test_check_mode_reports_a_stale_table(tmp_path, monkeypatch):
    out = tmp_path / "_generated"
    out.mkdir()
    (out / "lm.md").write_text("a table edited by hand\n")
    monkeypatch.setattr(docs_figures, "OUT", out)
    monkeypatch.setattr(docs_figures, "README", REPO / "README.md")
    assert docs_figures.main(["--check"]) == 1
    assert (out / "lm.md").read_text() == "a table edited by hand\n"  # --check writes nothing


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs-material is not installed")
def test_mkdocs_builds_strict(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "benchmarks" / "index.html").exists()


def test_readme_summary_rows_read_their_json():
    """Two figures of the README's summary, recomputed here from the JSON files themselves."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    vnni = json.loads((REPO / "bench/results/bench_avx512vnni.json").read_text())["threads"]["2"]
    lm = json.loads((REPO / "bench/results/lm.json").read_text())
    fp32, ours = vnni["pytorch-fp32"]["spearman"], vnni["modelpress-int8-openvino"]["spearman"]
    assert f"STS-B ρ {fp32:.2f} → {ours:.2f} (OpenVINO int8)" in readme
    assert f"perplexity ratio {lm['fidelity']['modelpress-int8']['perplexity_ratio']:.5f}" in readme
    start = readme.index(docs_figures.SUMMARY_BEGIN)
    rows = readme[start : readme.index(docs_figures.SUMMARY_END)].splitlines()[3:]
    assert len(rows) == 6 and all(".json`, 20" in row for row in rows)
