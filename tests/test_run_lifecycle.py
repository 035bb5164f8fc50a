"""A run's life as a user sees it from outside: interrupted by SIGINT or SIGTERM it exits 130 / 143,
leaves no staging folder and keeps the earlier bundle intact; the make targets run one stage of a
recipe each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST_CALIBRATION, FAST_VALIDATE, REPO, write_recipe

from modelpress.manifest import verify


def _recipe(tmp_path: Path, tiny_bert, data_files, **validate) -> Path:
    return write_recipe(
        tmp_path / "life.toml",
        {"name": "life", "teacher": str(tiny_bert.path)},
        {
            "calibration": {"data": str(data_files.calibration_txt), **FAST_CALIBRATION},
            "validate": {"eval_data": str(data_files.pairs_jsonl), **FAST_VALIDATE, **validate},
        },
    )


@pytest.fixture
def published(tmp_path, tiny_bert, data_files):
    """An earlier bundle in out/life (a folder with a manifest), and a slow recipe of the same name."""
    from modelpress.manifest import write_manifest

    bundle = tmp_path / "out" / "life"
    (bundle / "tokenizer").mkdir(parents=True)
    (bundle / "model.int8.onnx").write_bytes(b"the earlier run's model")
    (bundle / "tokenizer" / "vocab.txt").write_text("[PAD]\n", encoding="utf-8")
    write_manifest(
        bundle,
        recipe={"name": "life"},
        task={"task": "feature-extraction"},
        metrics={},
        gate={"passed": True},
        input_names=["input_ids"],
    )
    slow = tmp_path / "slow"
    slow.mkdir()
    return tmp_path / "out", _recipe(slow, tiny_bert, data_files, latency_runs=100000)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_exits_128_plus_signal_and_keeps_the_earlier_bundle(published, sig, code):
    out, slow = published
    before = {p.name: p.stat().st_mtime_ns for p in (out / "life").rglob("*")}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    # a pytest-xdist worker may ignore SIGINT, and an ignored signal stays ignored across exec (Python
    # then installs no KeyboardInterrupt handler): the child starts with the default, as from a shell
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelpress", "run", str(slow), "--out", str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    # the run is under way once its staging folder holds the recipe; it then loads and exports
    while not list(out.glob(".life.partial-*/recipe.toml")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(2.0)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("modelpress: "), stderr[-6000:]
    assert sorted(p.name for p in out.iterdir()) == [".life.lock", "life"]  # no staging folder left
    assert {p.name: p.stat().st_mtime_ns for p in (out / "life").rglob("*")} == before
    assert verify(out / "life") == []


def test_make_targets_run_single_stages_of_a_recipe(tmp_path, tiny_bert, data_files, capsys):
    """`make export` and `make quantize` run for real; `make validate` is checked to run the
    command that is then run here in process (the same code, without a third interpreter start)."""
    import shlex

    from modelpress.cli import main

    recipe = _recipe(tmp_path, tiny_bert, data_files)
    stage_dir = tmp_path / "stages"
    venv = Path(sys.executable).parent.parent
    # -o: the environment running the tests is set up; make must not reinstall it
    make = [
        "make",
        "-s",
        "-C",
        str(REPO),
        f"RECIPE={recipe}",
        f"STAGE_DIR={stage_dir}",
        f"PY={sys.executable}",
        f"VENV={venv}",
        "-o",
        f"{venv}/.installed",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for target, made in (("export", "model.onnx"), ("quantize", "model.int8.onnx")):
        proc = subprocess.run([*make, target], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (target, proc.stderr[-2000:])
        assert (stage_dir / made).is_file(), target
    dry = subprocess.run([*make, "-n", "validate"], env=env, capture_output=True, text=True, timeout=60)
    command = shlex.split(dry.stdout.strip().splitlines()[-1])
    assert command[:3] == [sys.executable, "-m", "modelpress"] and command[3] == "validate"
    # the tiny model's int8 is within the default 0.5 points: validate exits with the gate's 0
    assert main(command[3:]) == 0, capsys.readouterr().err[-2000:]
    assert (stage_dir / "report.json").is_file()
    # `make gate RUN_DIR=$(STAGE_DIR)` trusts that report through the manifest validate wrote beside
    # it (issue 21 case 2), which lists only its own files: the stage files may be rewritten
    dry = subprocess.run(
        [*make, "-n", "gate", f"RUN_DIR={stage_dir}"], env=env, capture_output=True, text=True, timeout=60
    )
    command = shlex.split(dry.stdout.strip().splitlines()[-1])
    assert command[3:] == ["gate", str(stage_dir)]
    capsys.readouterr()
    assert main(command[3:]) == 0 and capsys.readouterr().out.startswith("gate PASS")
    (stage_dir / "model.onnx").write_bytes(b"exported again")
    assert main(command[3:]) == 0
    report = json.loads((stage_dir / "report.json").read_text())
    report["gate"]["max_drop"] = 99.0  # a hand-edited report
    (stage_dir / "report.json").write_text(json.dumps(report))
    assert main(command[3:]) == 2
    assert "does not match its manifest.json (report.json" in capsys.readouterr().err
    (stage_dir / "manifest.json").unlink()  # ... and without its manifest
    assert main(command[3:]) == 2
    assert f"{stage_dir}: no manifest.json" in capsys.readouterr().err


def test_an_interrupt_raised_inside_generated_code_still_exits_130(tmp_path):
    """A Ctrl-C that lands while a dataclass or torch.fx builds code by ``exec`` used to end
    ``python -m`` by SIGINT (status -2) instead of 130: CPython keeps a flag for it."""
    (tmp_path / "interrupted_cli.py").write_text(
        "import sys\n"
        "from modelpress import cli\n"
        "def interrupted(args):\n"
        "    exec('raise KeyboardInterrupt')\n"
        "cli.COMMANDS['gate'] = interrupted\n"
        "sys.exit(cli.main(['gate', 'nowhere']))\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    proc = subprocess.run(
        [sys.executable, "-m", "interrupted_cli"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "modelpress: interrupted (SIGINT); nothing was published"
