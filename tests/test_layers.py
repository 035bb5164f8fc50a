"""The layers (#22 item 4): import-linter's contracts (pyproject.toml [tool.importlinter], run by `make lint`)
catch a layer that imports upward, and no import hides inside a function body (where the contracts still see it
but a reader does not, and where it used to hide import cycles) except those of the optional heavy packages."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from conftest import REPO

SOURCES = ("modelpress", "export", "runtimes", "calibration_data", "validate", "distill")
#: packages a user may not have installed (extras, GPU stacks) or a platform may lack: imported where used, anywhere
OPTIONAL = frozenset(
    {
        "tensorrt",
        "openvino",
        "openvino_genai",
        "nncf",
        "matplotlib",
        "datasets",
        "sklearn",
        "model_signing",
        "cryptography",
        "google",
        "onnxruntime_genai",
        "openvino_tokenizers",
        "llama_cpp",
        "jinja2",  # transformers' dependency, not ours: a bundle's chat template only
        "fcntl",
    }
)
#: the one place imports are resolved by name (the CLI's command table, the task/runtime registries):
#: ``importlib.import_module`` of a string, not an import statement, so nothing to list here

#: an import inside a function that neither rule allows, each with the reason it stays there: (file, top-level
#: package or our module) → why. Reviewed, not counted: a new one is a new line here, read in review.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("modelpress/fileio.py", "onnxruntime"): "fileio serves manifest/gate/inspect: `modelpress --help` and "
    "`gate` do not load onnxruntime (0.6 s) to read JSON",
    ("modelpress/image_processing.py", "PIL"): "Pillow only where an image is resized: a text bundle does not load it",
    ("modelpress/modalities/image.py", "PIL"): "Pillow only for the export's probe image",
    ("calibration_data/images.py", "PIL"): "Pillow only where image files are read: text calibration does not load it",
    ("modelpress/tokenization.py", "tokenizers"): "loads with modalities.text, which the task registry and so the "
    "CLI parser (--task choices) import: `modelpress --help` would pay ~40 ms for tokenizers",
    ("modelpress/models.py", "huggingface_hub"): "models is imported by the CLI parser (cli_model: resolve_model_ref, "
    "PACKAGE_PREFIX): the loaders keep the hub client, transformers and torch inside the functions that load",
    ("modelpress/models.py", "transformers"): "as above (models.py)",
    ("modelpress/models.py", "safetensors"): "as above (models.py)",
    ("modelpress/models.py", "torch"): "as above (models.py)",
    ("modelpress/provenance.py", "huggingface_hub"): "only a hub id fetches; a local folder or package: model does "
    "not load the hub client",
    ("modelpress/quantize/weight_only.py", "onnxruntime"): "onnxruntime.quantization.matmul_nbits_quantizer takes "
    "~5 s to import (it loads torch): only quantize.mode = weight-only pays",
    ("modelpress/testing.py", "transformers"): "the tiny-model builders for tests and benches: each loads only the "
    "stack its model needs",
    ("modelpress/testing.py", "torch"): "as above (testing.py)",
    ("modelpress/testing.py", "numpy"): "as above (testing.py)",
    ("modelpress/testing.py", "PIL"): "as above (testing.py)",
    ("runtimes/tensorrt/gpu.py", "torch"): "gpu.py's GpuIdentity and require_tensorrt serve the engine "
    "metadata and build, which need no torch; torch (its CUDA build) only in require_torch_cuda, for the runner's "
    "buffers",
}


def _module_name(rel: str) -> str:
    """``runtimes/target.py`` → ``modelpress.runtimes.target`` (the top-level folders install under modelpress)."""
    dotted = rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    return dotted if dotted.startswith("modelpress") else f"modelpress.{dotted}"


def _allowed(rel: str, module: str) -> bool:
    """An import of ``module`` inside a function of file ``rel`` is allowed: an optional package anywhere; on the
    torch-free deploy side (modelpress/deploy_side.py), the pressing stack and our modules of the pressing side
    (they import torch); or an exception listed with its reason."""
    from modelpress.deploy_side import DEPLOY_SIDE_MODULES, PRESS_MODULES

    top = module.split(".")[0]
    if top in OPTIONAL:
        return True
    if _module_name(rel) in DEPLOY_SIDE_MODULES:
        if top in PRESS_MODULES or (top == "modelpress" and module not in DEPLOY_SIDE_MODULES):
            return True
    return (rel, top) in EXCEPTIONS or (rel, module) in EXCEPTIONS


def _staged_lint():
    spec = importlib.util.spec_from_file_location("staged_lint", REPO / "tools" / "staged_lint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _function_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of each import inside a function body."""
    found: list[tuple[int, str]] = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in child.names] if isinstance(child, ast.Import) else [child.module or "."]
                found.extend((child.lineno, n) for n in names)
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), False)
    return found


def _sources() -> list[str]:
    return [str(p.relative_to(REPO)) for folder in SOURCES for p in sorted((REPO / folder).rglob("*.py"))]


def test_imports_inside_functions_only_for_optional_packages():
    hidden = [
        f"{rel}:{line}: {module}"
        for rel in _sources()
        for line, module in _function_imports(REPO / rel)
        if not _allowed(rel, module)
    ]
    assert not hidden, (
        "import these at the module top (or, for an optional package, name it in OPTIONAL; else an EXCEPTIONS "
        "line with its reason):\n" + "\n".join(hidden)
    )


def test_every_exception_is_still_needed():
    """An exception whose import moved to the top (or went) leaves the list: it may only shrink by use."""
    used = {
        key
        for rel in _sources()
        for _, module in _function_imports(REPO / rel)
        for key in ((rel, module.split(".")[0]), (rel, module))
    }
    assert not set(EXCEPTIONS) - used, sorted(set(EXCEPTIONS) - used)


def test_the_rule_catches_an_import_hidden_in_a_function(tmp_path: Path):
    """The check itself: a required package or our own module imported in a function body of a press-side
    module is refused; the same in a deploy-side module, or an optional package, passes."""
    hidden = tmp_path / "hidden.py"
    hidden.write_text("def f():\n    import torch\n    from modelpress import recipe\n    import openvino\n")
    found = _function_imports(hidden)
    assert found == [(2, "torch"), (3, "modelpress"), (4, "openvino")]
    assert [m for _, m in found if not _allowed("modelpress/pipeline.py", m)] == ["torch", "modelpress"]
    assert [m for _, m in found if not _allowed("modelpress/modalities/text.py", m)] == []


def test_the_optional_list_names_no_required_package():
    """A package the project depends on is imported at the top: torch and transformers are not optional."""
    required = {"torch", "transformers", "onnx", "onnxruntime", "numpy", "scipy", "PIL", "safetensors", "tokenizers"}
    assert not OPTIONAL & required


def test_the_contracts_hold_and_catch_an_upward_import(tmp_path: Path):
    lint = _staged_lint()
    lint.stage(tmp_path)
    kept = lint.run("imports", tmp_path, capture_output=True, text=True, timeout=300)
    assert kept.returncode == 0, kept.stdout[-3000:]
    # core (paths) importing the pipeline: a layer climbing up, and a cycle
    with (tmp_path / "modelpress" / "paths.py").open("a", encoding="utf-8") as fh:
        fh.write("\nfrom modelpress import pipeline  # noqa: E402\n")
    broken = lint.run("imports", tmp_path, capture_output=True, text=True, timeout=300)
    assert broken.returncode != 0
    out = " ".join(broken.stdout.split())
    assert "modelpress.paths is not allowed to import modelpress.pipeline" in out
    assert "No cycles are allowed" in out


def test_the_staged_copy_holds_every_installed_package(tmp_path: Path):
    """The checkers read the copy: a package missing there would go unchecked."""
    lint = _staged_lint()
    lint.stage(tmp_path)
    for folder in ("export", "runtimes", "calibration_data", "validate", "distill"):
        assert (tmp_path / "modelpress" / folder / "__init__.py").is_file(), folder
    sources = {p.relative_to(REPO / "modelpress").as_posix() for p in (REPO / "modelpress").rglob("*.py")}
    staged = {p.relative_to(tmp_path / "modelpress").as_posix() for p in (tmp_path / "modelpress").rglob("*.py")}
    assert sources <= staged


def test_cli_help_loads_no_stage_and_every_command_resolves():
    """``modelpress --help`` and ``gate`` stay light: the command table names its functions by string, imported
    when the command runs; each entry names a function its module defines."""
    import subprocess
    import sys

    probe = (
        "import sys, contextlib, io\n"
        "from modelpress import cli\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    cli.main(['--help'])\n"
        "heavy = ('torch', 'transformers', 'onnx', 'modelpress.pipeline', 'modelpress.commands.run')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "cli.command('gate')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == ["[]", "[]"], out.stdout
    from modelpress.cli import COMMANDS

    for name, target in COMMANDS.items():
        module, _, function = str(target).partition(":")
        assert module.startswith("modelpress.commands."), name
        path = REPO / (module.replace(".", "/") + ".py")
        defined = {n.name for n in ast.parse(path.read_text(encoding="utf-8")).body if isinstance(n, ast.FunctionDef)}
        assert function in defined, f"{name}: {target}"
