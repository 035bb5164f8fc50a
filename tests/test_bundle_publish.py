"""Where a run's output goes, and that nothing failed or out of place passes for a bundle (issue 21):
a failed gate publishes to ``<name>.rejected`` and the last passing bundle stays byte-identical
(case 1); ``gate`` trusts no report without a manifest (case 2); ``analyze`` writes beside the
bundle, not into it (case 3); ``--out`` is never a bundle or inside one (case 7).

One passing and one failing run of the same recipe name (in process) serve every test here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import FAST_CALIBRATION, FAST_VALIDATE, REPO, write_recipe

from modelpress.errors import BadInputError
from modelpress.manifest import verify


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _last_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines and "Traceback" not in err, err[-3000:]
    return lines[-1]


@dataclass(frozen=True)
class Runs:
    out: Path
    recipe: Path
    passed: Path  # out/pub: the passing run
    rejected: Path  # out/pub.rejected: the failing run of the same name
    before: dict[str, bytes]  # out/pub's bytes before the failing run
    pass_stdout: str
    fail_code: int
    fail_stdout: str


@pytest.fixture(scope="module")
def runs(tiny_bert, data_files, tmp_path_factory) -> Runs:
    import contextlib
    import io

    from modelpress.cli import main

    work = tmp_path_factory.mktemp("publish")
    recipe = write_recipe(
        work / "pub.toml",
        {"name": "pub", "teacher": str(tiny_bert.path)},
        {
            "task_options": {"normalize": True},
            "calibration": {"data": str(data_files.calibration_txt), **FAST_CALIBRATION},
            "validate": {"eval_data": str(data_files.pairs_jsonl), **FAST_VALIDATE},
            "gate": {"max_drop": 50.0},
        },
    )
    out = work / "out"

    def run(*extra: str) -> tuple[int, str]:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = main(["-q", "run", str(recipe), "--out", str(out), *extra])
        return code, buf.getvalue()

    code, pass_stdout = run()
    assert code == 0, pass_stdout
    before = _snapshot(out / "pub")
    # an earlier rejected run (a bundle: only a bundle is ever replaced), which the next failing run replaces
    shutil.copytree(out / "pub", out / "pub.rejected")
    (out / "pub.rejected" / "earlier.txt").write_text("an earlier rejected run", encoding="utf-8")
    # int8's mean cosine to the teacher is below 1: gated with no slack on it, the run fails
    fail_code, fail_stdout = run("--set", "gate.max_drop=0.0", "--set", 'gate.metric="mean_cosine"')
    return Runs(out, recipe, out / "pub", out / "pub.rejected", before, pass_stdout, fail_code, fail_stdout)


# -- case 1: a failed verdict never takes the bundle's place -------------------------------------------------
def test_a_failed_run_goes_to_rejected_and_the_passing_bundle_stays_byte_identical(runs):
    """issue 21 case 1: before, the failing run replaced out/pub and load() opened it silently."""
    assert runs.fail_code == 3, runs.fail_stdout
    assert (
        f"rejected: {runs.rejected} (the gate failed; the last passing bundle {runs.passed} is unchanged)"
        in runs.fail_stdout
    )
    assert "gate FAIL" in runs.fail_stdout and "bundle:" not in runs.fail_stdout
    assert _snapshot(runs.passed) == runs.before  # byte-identical
    assert verify(runs.passed) == []
    assert json.loads((runs.passed / "manifest.json").read_text())["verdict"] == "pass"
    assert sorted(p.name for p in runs.out.iterdir()) == [".pub.lock", "pub", "pub.rejected"]
    # complete, with its report, replacing the earlier rejected run
    rejected = json.loads((runs.rejected / "manifest.json").read_text())
    assert rejected["verdict"] == "fail" and verify(runs.rejected) == []
    assert not (runs.rejected / "earlier.txt").exists()
    report = json.loads((runs.rejected / "report.json").read_text())
    assert report["gate"]["passed"] is False and report["gate"]["metric"] == "mean_cosine"
    assert report["gate"]["drop"] > 0 and (runs.rejected / "model.int8.onnx").is_file()


def test_load_refuses_a_failed_bundle_unless_allowed(runs, data_files):
    """issue 21 case 1: ``load()`` of a failed bundle is one line; ``allow_failed=True`` opens it."""
    import numpy as np

    from modelpress.bundle import load

    with pytest.raises(BadInputError, match=r'the gate failed this bundle \(manifest verdict "fail"\)') as err:
        load(runs.rejected)
    assert "\n" not in str(err.value) and "allow_failed=True" in str(err.value)
    texts = list(data_files.eval_texts[:5])
    with load(runs.rejected, allow_failed=True) as failed, load(runs.passed) as passed:
        a, b = failed.embed(texts), passed.embed(texts)
    assert a.shape == b.shape == (5, 32)
    # both are int8 of the same model and calibration: the same bundle content, only the verdict differs
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_load_hashes_the_model_it_opens_and_sizes_the_large_ones_it_does_not(runs, tmp_path, monkeypatch):
    """``load()`` opens one model: a large file it does not open (the fp32 export) is checked by its size, not
    hashed (an LLM bundle's 1.9 GB spent 1.5 s there); the model it opens is hashed, and ``verify`` (the CLI's
    check) still hashes every file."""
    from modelpress import manifest
    from modelpress.bundle import load

    bundle = tmp_path / "pub"
    shutil.copytree(runs.passed, bundle)
    monkeypatch.setattr(manifest, "UNOPENED_BYTES", 1024)  # the tiny bundle's models count as large
    with load(bundle) as loaded:
        opened = loaded.runner.model_path.name
    assert opened == "model.int8.onnx"
    fp32 = bundle / "model.onnx"
    data = bytearray(fp32.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    fp32.write_bytes(bytes(data))
    with load(bundle):  # not opened: its size still matches
        pass
    assert verify(bundle) == ["model.onnx"]
    fp32.write_bytes(bytes(data[:-1]))  # another size: refused
    with pytest.raises(BadInputError, match=r"does not match its manifest.json \(model.onnx;"):
        load(bundle)
    shutil.copy(runs.passed / "model.onnx", fp32)
    int8 = bundle / opened
    data = bytearray(int8.read_bytes())
    data[-1] ^= 0xFF
    int8.write_bytes(bytes(data))
    with pytest.raises(BadInputError, match=r"does not match its manifest.json \(model.int8.onnx;"):
        load(bundle)  # the model load() opens is hashed


def test_gate_and_make_gate_judge_the_rejected_run_when_asked(runs, capsys):
    from modelpress.cli import main

    assert main(["gate", str(runs.rejected)]) == 3
    assert capsys.readouterr().out.startswith("gate FAIL")
    assert main(["gate", str(runs.rejected), "--max-drop", "100"]) == 0
    venv = Path(sys.executable).parent.parent
    proc = subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(REPO),
            f"RUN_DIR={runs.rejected}",
            f"PY={sys.executable}",
            f"VENV={venv}",
            "-o",
            f"{venv}/.installed",
            "gate",
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    # make exits 2 when a command fails; the command's own 3 is in make's line
    assert proc.stdout.startswith("gate FAIL") and "gate] Error 3" in proc.stderr, proc.stderr[-2000:]


# -- case 2: no manifest, no trust ---------------------------------------------------------------------------
def test_gate_and_load_refuse_a_folder_without_manifest(runs, tmp_path, capsys):
    """issue 21 case 2: with manifest.json deleted and report.json edited to pass, ``gate`` said PASS."""
    from modelpress.bundle import load
    from modelpress.cli import main

    strict = ["--metric", "mean_cosine", "--max-drop", "0"]
    assert main(["gate", str(runs.passed), *strict]) == 3  # int8 lost a little mean cosine
    capsys.readouterr()
    edited = tmp_path / "edited"
    shutil.copytree(runs.passed, edited)
    (edited / "manifest.json").unlink()
    report = json.loads((edited / "report.json").read_text())
    report["models"]["int8"]["metrics"]["mean_cosine"] = report["models"]["teacher"]["metrics"]["mean_cosine"]
    (edited / "report.json").write_text(json.dumps(report))
    assert main(["gate", str(edited), *strict]) == 2  # was 0: the edited report passed
    captured = capsys.readouterr()
    assert (
        captured.out == ""
        and _last_error(captured.err)
        == f"modelpress: error: {edited}: no manifest.json (not a published modelpress bundle or validate report; "
        "nothing in it can be trusted)"
    )
    with pytest.raises(BadInputError, match="no manifest.json"):
        load(edited)


def test_a_validate_report_is_trusted_through_its_own_manifest(tmp_path):
    """The stage folder's manifest lists only the report files: the stage files beside them may
    change (``make export`` again), the report may not; and the folder is not a bundle for ``--out``."""
    from modelpress.manifest import trusted_report, write_report_manifest
    from modelpress.paths import enclosing_bundle, refuse_inside_bundle

    stages = tmp_path / "x.stages"
    stages.mkdir()
    (stages / "model.onnx").write_bytes(b"fp32")
    (stages / "model.int8.onnx").write_bytes(b"int8")
    (stages / "report.json").write_text('{"gate": {}}', encoding="utf-8")
    (stages / "report.md").write_text("# report", encoding="utf-8")
    write_report_manifest(
        stages, [stages / "report.json", stages / "report.md"], gate=None, candidate=stages / "model.int8.onnx"
    )
    manifest = json.loads((stages / "manifest.json").read_text())
    assert manifest["kind"] == "report" and set(manifest["files"]) == {"report.json", "report.md"}
    assert manifest["candidate"]["bytes"] == 4 and manifest["candidate"]["path"] == "model.int8.onnx"
    assert trusted_report(stages) == stages / "report.json"
    (stages / "model.onnx").write_bytes(b"exported again")  # another stage's file
    (stages / "quantization.json").write_text("{}", encoding="utf-8")
    assert trusted_report(stages) == stages / "report.json" and verify(stages) == []
    # the candidate it judged, quantized again (`make quantize`) after `make validate`: the report
    # is about another model now (gate passed it before)
    (stages / "model.int8.onnx").write_bytes(b"int8, quantized again")
    with pytest.raises(
        BadInputError,
        match=r"model.int8.onnx: the candidate has changed since this report "
        r"judged it; validate it again",
    ):
        trusted_report(stages)
    (stages / "model.int8.onnx").unlink()
    with pytest.raises(BadInputError, match=r"model.int8.onnx: the candidate is gone since this report judged it"):
        trusted_report(stages)
    (stages / "model.int8.onnx").write_bytes(b"int8")
    assert trusted_report(stages) == stages / "report.json"
    assert enclosing_bundle(stages) is None
    refuse_inside_bundle(stages / "model.onnx")  # `make export` may write here again
    (stages / "report.json").write_text('{"gate": {"passed": true}}', encoding="utf-8")
    with pytest.raises(BadInputError, match=r"does not match its manifest.json \(report.json"):
        trusted_report(stages)
    (stages / "report.json").write_text('{"gate": {}}', encoding="utf-8")
    write_report_manifest(stages, [stages / "report.md"], gate=None)  # a manifest that does not vouch for it
    with pytest.raises(BadInputError, match="does not list report.json"):
        trusted_report(stages)


# -- case 3: analysis beside the bundle ----------------------------------------------------------------------
def test_analyze_writes_beside_the_bundle_and_gate_and_load_still_pass(runs, capsys):
    """issue 21 case 3: ``analyze`` wrote analysis/ into the bundle, which then failed its manifest."""
    from modelpress.bundle import load
    from modelpress.cli import main

    assert main(["-q", "analyze", str(runs.passed), "--top", "3"]) == 0
    out = capsys.readouterr().out
    beside = runs.out / "pub.analysis"
    assert f"analysis: {beside / 'analysis.json'}" in out
    rows = json.loads((beside / "analysis.json").read_text())
    assert rows and all("sqnr_db" in r for r in rows)
    assert _snapshot(runs.passed) == runs.before and verify(runs.passed) == []
    assert main(["gate", str(runs.passed)]) == 0
    with load(runs.passed) as bundle:
        assert bundle.embed(["a dog"]).shape == (1, 32)
    # a --out inside the bundle is refused before anything is written
    assert main(["-q", "analyze", str(runs.passed), "--out", str(runs.passed / "analysis")]) == 2
    err = capsys.readouterr().err
    assert _last_error(err) == (
        f"modelpress: error: --out {runs.passed / 'analysis'}: is inside the bundle "
        f"{runs.passed}; write outside it (e.g. into {runs.out})"
    )
    assert not (runs.passed / "analysis").exists() and _snapshot(runs.passed) == runs.before


# -- case 7: --out is never a bundle --------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["the bundle", "inside the bundle"])
def test_run_refuses_an_out_that_is_a_bundle_or_inside_one(runs, where, capsys):
    """issue 21 case 7: ``--out`` at a bundle nested the new bundle in it, which then failed its manifest."""
    from modelpress.cli import main

    out = runs.passed if where == "the bundle" else runs.passed / "tokenizer"
    assert main(["-q", "run", str(runs.recipe), "--out", str(out)]) == 2
    expected = "is a modelpress bundle" if where == "the bundle" else f"is inside the bundle {runs.passed}"
    assert (
        _last_error(capsys.readouterr().err)
        == f"modelpress: error: --out {out}: {expected}; write outside it (e.g. into {runs.out})"
    )
    assert _snapshot(runs.passed) == runs.before  # nothing nested, no lock file added


def test_the_stage_commands_refuse_an_out_inside_a_bundle(runs, tiny_bert, data_files, capsys):
    from modelpress.cli import main

    bundle = runs.passed
    for args in (
        ["export", str(tiny_bert.path), "--out", str(bundle / "model.onnx")],
        [
            "quantize",
            str(bundle / "model.onnx"),
            "--tokenizer",
            str(tiny_bert.path),
            "--data",
            str(data_files.calibration_txt),
            "--out",
            str(bundle / "again.int8.onnx"),
        ],
        [
            "validate",
            "--teacher",
            str(tiny_bert.path),
            "--candidate",
            str(bundle / "model.int8.onnx"),
            "--out",
            str(bundle / "validation"),
        ],
        ["distill", str(runs.recipe), "--out", str(bundle)],
    ):
        assert main(["-q", *args]) == 2, args
        expected = "is a modelpress bundle" if args[0] == "distill" else f"is inside the bundle {bundle}"
        assert expected in _last_error(capsys.readouterr().err), args
    assert _snapshot(bundle) == runs.before


@pytest.mark.parametrize("kind", ["a model folder", "a file", "a link"])
def test_run_never_replaces_what_is_not_a_bundle(runs, tmp_path, kind, capsys):
    """`run --out .` with a recipe named like the teacher's folder (teacher = "fe", name = "fe")
    deleted the teacher and put the bundle in its place, exit 0. A folder, file or link at
    <out>/<name> or <out>/<name>.rejected that is not a bundle is now refused before any work."""
    from modelpress.cli import main

    out = tmp_path / "out"
    out.mkdir()
    for final in ("pub", "pub.rejected"):
        where = out / final
        if kind == "a model folder":
            where.mkdir()
            (where / "model.safetensors").write_bytes(b"the teacher's weights")
        elif kind == "a file":
            where.write_text("notes", encoding="utf-8")
        else:
            where.symlink_to(runs.passed, target_is_directory=True)
        before = sorted(p.name for p in out.iterdir())
        assert main(["-q", "run", str(runs.recipe), "--out", str(out)]) == 2
        what = "a folder that is not a modelpress bundle" if kind == "a model folder" else kind
        assert _last_error(capsys.readouterr().err) == (
            f"modelpress: error: {where}: is {what}, which publishing the run there would delete; move it, or give "
            "another --out or recipe name"
        )
        assert sorted(p.name for p in out.iterdir()) == sorted({*before, ".pub.lock"})
        if kind == "a model folder":
            assert (where / "model.safetensors").read_bytes() == b"the teacher's weights"
        shutil.rmtree(where) if where.is_dir() and not where.is_symlink() else where.unlink()
    assert _snapshot(runs.passed) == runs.before


def test_publish_replaces_a_bundle_or_an_empty_folder_only(tmp_path):
    from modelpress.paths import publish

    staging, final = tmp_path / ".x.partial", tmp_path / "x"
    for existing in ("empty", "bundle"):
        staging.mkdir()
        (staging / "bundle.json").write_text('{"task": {"task": "feature-extraction"}, "input_names": []}')
        final.mkdir(exist_ok=True)
        publish(staging, final)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["x"] and (final / "bundle.json").is_file()
    staging.mkdir()
    (final / "bundle.json").unlink()
    (final / "weights.bin").write_bytes(b"w")
    with pytest.raises(BadInputError, match="is a folder that is not a modelpress bundle"):
        publish(staging, final)
    assert (final / "weights.bin").read_bytes() == b"w" and staging.is_dir()


def test_validate_never_overwrites_another_tools_manifest(runs, tiny_bert, tmp_path, capsys):
    """`modelpress validate --out .` in a web project replaced its manifest.json with the report's."""
    from modelpress.cli import main

    web = tmp_path / "webapp"
    web.mkdir()
    (web / "manifest.json").write_text('{"name": "my web app", "start_url": "/"}', encoding="utf-8")
    assert (
        main(
            [
                "-q",
                "validate",
                "--teacher",
                str(tiny_bert.path),
                "--candidate",
                str(runs.passed / "model.int8.onnx"),
                "--out",
                str(web),
            ]
        )
        == 2
    )
    assert _last_error(capsys.readouterr().err) == (
        f"modelpress: error: {web / 'manifest.json'}: not a modelpress validate report's manifest, and the "
        "report's would replace it; give another --out"
    )
    assert (web / "manifest.json").read_text(encoding="utf-8") == '{"name": "my web app", "start_url": "/"}'
    assert sorted(p.name for p in web.iterdir()) == ["manifest.json"]


# -- the layout's pieces ------------------------------------------------------------------------------------
def test_an_interrupted_swap_of_the_rejected_run_is_put_back(tmp_path):
    """A run killed between the two renames of publishing to <name>.rejected left .<name>.rejected.old."""
    from modelpress.paths import recover

    out = tmp_path / "out"
    (out / ".x.rejected.old").mkdir(parents=True)
    (out / ".x.rejected.old" / "report.json").write_text("{}", encoding="utf-8")
    (out / ".x.partial-1-ab").mkdir()
    assert sorted(recover(out, "x")) == ["removed .x.partial-1-ab", "restored x.rejected from .x.rejected.old"]
    assert sorted(p.name for p in out.iterdir()) == ["x.rejected"]


def test_is_bundle_and_the_analysis_folder_name(tmp_path, monkeypatch):
    from modelpress.paths import analysis_dir, enclosing_bundle, is_bundle

    (tmp_path / "a").mkdir()
    assert not is_bundle(tmp_path / "a")
    (tmp_path / "a" / "bundle.json").write_text(
        '{"task": {"name": "feature-extraction"}, "input_names": []}', encoding="utf-8"
    )
    assert is_bundle(tmp_path / "a") and enclosing_bundle(tmp_path / "a" / "b" / "c") == tmp_path / "a"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_text('{"schema": 2, "files": {}}', encoding="utf-8")
    assert is_bundle(tmp_path / "m")  # a bundle's manifest, kind left out
    assert analysis_dir(tmp_path / "a") == tmp_path / "a.analysis"
    monkeypatch.chdir(tmp_path / "a")
    assert analysis_dir(Path(".")) == tmp_path / "a.analysis"  # `modelpress analyze .` from inside it


@pytest.mark.parametrize(
    "name, text",
    [
        ("manifest.json", '{"name": "my web app", "start_url": "/", "icons": []}'),  # a web app manifest
        ("manifest.json", '{"manifest_version": 3, "name": "an extension"}'),
        ("manifest.json", "// not JSON at all"),
        ("bundle.json", '{"files": ["main.js"]}'),  # another tool's bundle.json
        ("bundle.json", "[1, 2]"),
    ],
)
def test_a_project_folder_with_another_tools_manifest_is_not_a_bundle(tmp_path, name, text):
    """Any manifest.json or bundle.json above --out made it "inside the bundle": in a web project
    (its manifest.json at the root) every `modelpress run --out artifacts` was refused."""
    from modelpress.paths import enclosing_bundle, is_bundle, refuse_inside_bundle

    (tmp_path / name).write_text(text, encoding="utf-8")
    assert not is_bundle(tmp_path)
    assert enclosing_bundle(tmp_path / "artifacts" / "x") is None
    refuse_inside_bundle(tmp_path / "artifacts")  # no error


@pytest.mark.parametrize("name", ["minilm.rejected", "minilm.analysis", "x.stages", "x.distill"])
def test_a_recipe_name_that_would_collide_with_a_bundles_siblings_is_refused(tmp_path, name):
    """A recipe named ``x.rejected`` would publish where another recipe's failed run goes."""
    from modelpress.recipe import recipe_from_dict

    with pytest.raises(BadInputError, match=r"^name: .* ends in a suffix of the folders beside a bundle"):
        recipe_from_dict({"name": name, "teacher": "prajjwal1/bert-tiny"})
    assert recipe_from_dict({"name": "minilm.v2", "teacher": "prajjwal1/bert-tiny"}).name == "minilm.v2"
