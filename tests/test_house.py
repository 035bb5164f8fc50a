"""The house rules: one top-level import name, and a wheel that installs only ``modelpress``."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO

#: repo folders that install as modelpress.<folder>; importing them bare works only from a checkout
FOLDERS = ("export", "runtimes", "calibration_data", "validate", "distill")
SOURCES = ("modelpress", *FOLDERS, "bench", "tests")


def _bare_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in FOLDERS]
    return found


def test_no_module_imports_a_bare_top_level_folder():
    offenders = [hit for folder in SOURCES for p in sorted((REPO / folder).rglob("*.py")) for hit in _bare_imports(p)]
    assert not offenders, "import these as modelpress.<folder>:\n" + "\n".join(offenders)


def test_no_task_ladder_outside_the_task_modules():
    """What a task is lives in its module of the registry (modelpress/tasks/): nothing else
    compares a task's name."""
    import re

    ladder = re.compile(r"task\s*==|task\s*!=|task in \(|task not in \(")
    hits = [
        f"{p.relative_to(REPO)}:{n}: {line.strip()}"
        for folder in ("modelpress", *FOLDERS, "bench")
        for p in sorted((REPO / folder).rglob("*.py"))
        if "tasks" not in p.relative_to(REPO).parts[:2]
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if ladder.search(line)
    ]
    assert not hits, "\n".join(hits)


def test_the_wheel_holds_only_the_modelpress_package(tmp_path):
    import shutil

    # built from a copy, so the build leaves no build/ or egg-info in the checkout
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "artifacts", "build", "*.egg-info", "__pycache__", ".pytest_cache"
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("modelpress-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"modelpress"}
    # the folders are inside, with the shipped corpora as package data; bench/ and tests/ are not
    for folder in (*FOLDERS, "tasks", "modalities"):
        assert f"modelpress/{folder}/__init__.py" in names
    assert "modelpress/calibration_data/en_default.txt" in names
    assert not any(n.startswith(("modelpress/bench/", "bench/", "tests/")) for n in names)


#: modules shared by every task: they take a task's eval record and batches through the task's hooks
SHARED = ("validate", "modelpress/modalities", "modelpress/pipeline.py", "modelpress/cli.py")


def _task_owned_fields() -> set[str]:
    """The fields tasks declare on their eval records and batch payloads beyond the shared ones."""
    from dataclasses import fields

    from modelpress.modalities import Batch
    from modelpress.tasks import EvalSet, get_task, task_names

    shared = {f.name for f in fields(EvalSet)} | {f.name for f in fields(Batch)}
    owned = set()
    for name in task_names():
        task = get_task(name)
        assert issubclass(task.record_type(), EvalSet) and issubclass(task.payload_type(), Batch), name
        owned |= {f.name for f in fields(task.record_type())} | {f.name for f in fields(task.payload_type())}
    return owned - shared


def _declared_fields(tree: ast.Module) -> set[str]:
    """The annotated fields of the classes a module declares (a reader may name its own record's)."""
    return {
        node.target.id
        for cls in ast.walk(tree)
        if isinstance(cls, ast.ClassDef)
        for node in cls.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }


def test_shared_records_hold_only_what_every_task_shares():
    from dataclasses import fields

    from modelpress.modalities import Batch
    from modelpress.recipe import ValidateConfig
    from modelpress.tasks import EvalSet, get_task, task_names

    assert {f.name for f in fields(EvalSet)} == {"source", "format", "skipped"}
    assert {f.name for f in fields(Batch)} == {"feed", "size"}
    options = {option for name in task_names() for option in get_task(name).options()}
    assert not options & {f.name for f in fields(ValidateConfig)}, "a task's option is its own: [task_options]"


def test_no_shared_module_names_a_task_owned_field():
    """Validation, the report, the gate, the pipeline, the CLI and the modalities reach a task's
    eval record and batches through the task (``Task.describe_eval``, ``fidelity``, ``postprocess``,
    ...); a module may name only the fields of the records it declares itself (a reader, a
    modality's batch)."""
    owned = _task_owned_fields()
    assert {"labels", "pairs", "words", "tags", "images", "windows", "prompts", "first_tokens", "positions"} <= owned
    hits = []
    for entry in SHARED:
        root = REPO / entry
        for p in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            tree = ast.parse(p.read_text(encoding="utf-8"), filename=str(p))
            named = owned - _declared_fields(tree)
            hits += [
                f"{p.relative_to(REPO)}:{node.lineno}: .{node.attr}"
                for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and node.attr in named
            ]
    assert not hits, "\n".join(hits)


def test_a_modality_variant_is_registered_by_its_own_module_only():
    """text-pairs (cross-encoders) is the text modality with pairs as examples: text.py registers it,
    so a task on it adds no line to the modality registry; the name resolves like any other, and a
    miss still lists every name."""
    import pytest

    from modelpress.errors import BadInputError
    from modelpress.modalities import get_modality

    assert 'register("text-pairs"' not in (REPO / "modelpress" / "modalities" / "__init__.py").read_text(
        encoding="utf-8"
    )
    assert get_modality("text-pairs").name == "text-pairs"
    with pytest.raises(BadInputError, match="known modalitys: .*text-pairs"):
        get_modality("no-such-modality")
