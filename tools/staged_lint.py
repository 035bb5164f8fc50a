"""`make lint`'s layer and type checks, on modelpress laid out as installed.

``python tools/staged_lint.py imports`` runs import-linter's contracts and ``… types`` runs mypy (both configured
in pyproject.toml). Both find a package's modules by walking its folder, and this repository's top-level folders
(export/, runtimes/, validate/, …) become modelpress.<folder> only through [tool.setuptools.package-dir], which
neither can follow. So they read a copy laid out as installed: modelpress/ plus each mapped folder under it.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
CHECKS = {
    "imports": ["-c", "from importlinter.cli import lint_imports_command; lint_imports_command()", str(PYPROJECT)],
    "types": ["-m", "mypy", "--config-file", str(PYPROJECT)],
}


def stage(dest: Path) -> None:
    """Copies the package sources into ``dest`` in their installed layout (modelpress.export -> modelpress/export)."""
    setuptools = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]
    only_sources = shutil.ignore_patterns("__pycache__", "*.txt", "*.jsonl")
    shutil.copytree(REPO / "modelpress", dest / "modelpress", ignore=only_sources)
    for package, folder in setuptools["package-dir"].items():
        shutil.copytree(REPO / folder, dest / package.replace(".", "/"), ignore=only_sources)


def run(check: str, staged: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """Runs one checker on a staged copy (PYTHONPATH puts it ahead of the editable install's finder)."""
    env = {**os.environ, "PYTHONPATH": str(staged)}
    return subprocess.run([sys.executable, *CHECKS[check], *args], env=env, cwd=staged, **kwargs)


def main(check: str, *args: str) -> int:
    with tempfile.TemporaryDirectory(prefix="modelpress-lint-") as tmp:
        stage(Path(tmp))
        return run(check, Path(tmp), *args).returncode


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in CHECKS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(CHECKS)}}} [checker arguments]")
    sys.exit(main(*sys.argv[1:]))
