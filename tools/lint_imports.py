"""`make lint`'s layer check: import-linter's contracts ([tool.importlinter] in pyproject.toml) on modelpress.

grimp finds a package's modules by walking its folder, and this repository's top-level folders (export/,
runtimes/, validate/, …) become modelpress.<folder> only through [tool.setuptools.package-dir], which it cannot
follow. So the check runs on a copy laid out as installed: modelpress/ plus each mapped folder under it.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def stage(dest: Path) -> None:
    """Copies the package sources into ``dest`` in their installed layout (modelpress.export -> modelpress/export)."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    only_sources = shutil.ignore_patterns("__pycache__", "*.txt", "*.jsonl")
    shutil.copytree(REPO / "modelpress", dest / "modelpress", ignore=only_sources)
    for package, folder in setuptools["package-dir"].items():
        shutil.copytree(REPO / folder, dest / package.replace(".", "/"), ignore=only_sources)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="modelpress-layers-") as tmp:
        stage(Path(tmp))
        # PYTHONPATH puts the copy ahead of the editable install's finder, so grimp reads the copy
        env = {**os.environ, "PYTHONPATH": tmp}
        command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]
        return subprocess.run(
            [*command, "--config", str(REPO / "pyproject.toml"), *sys.argv[1:]], env=env, cwd=tmp
        ).returncode


if __name__ == "__main__":
    sys.exit(main())
