"""manifest.json: what is in a bundle and how it was made (checksums, versions, recipe, verdict)."""
from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from modelpress.errors import BadInputError

PACKAGES = ("modelpress", "torch", "transformers", "onnx", "onnxruntime", "numpy", "tokenizers")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_manifest(root: Path, *, recipe: dict[str, Any], task: dict[str, Any], metrics: dict[str, Any],
                   gate: dict[str, Any] | None, input_names: list[str]) -> Path:
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json"):
        files[str(path.relative_to(root))] = {"sha256": sha256(path), "bytes": path.stat().st_size}
    manifest = {
        "schema": 2,
        "files": files,
        "versions": versions(),
        "recipe": recipe,
        "task": task,
        "input_names": input_names,
        "metrics": metrics,
        "gate": gate,
        "verdict": None if gate is None else ("pass" if gate["passed"] else "fail"),
    }
    from modelpress.fileio import write_json

    return write_json(root / "manifest.json", manifest)


MANIFEST = "manifest.json"
#: files a bundle may gain after publishing without breaking it (the engine stage adds these on a GPU)
LATER_FILES = ("model.plan", "model.fp16.plan", "engine.json", "engine.fp16.json", "timing.cache",
               "model.fp16.onnx")


def verify(root: str | Path, *, allow_later: bool = False) -> list[str]:
    """What no longer matches the manifest, one entry per file (empty when the bundle is intact):
    ``name`` for a changed or missing file, ``+name`` for a file the manifest does not list, and
    ``!name`` for a manifest entry that points outside the bundle (``../../etc/passwd``).
    ``allow_later``: the engine files ``modelpress engine`` adds after publishing are not reported."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise BadInputError(f"{root}: no {MANIFEST} (not a published modelpress bundle)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = dict(manifest["files"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise BadInputError(f"{path}: not a valid manifest") from None
    base = root.resolve()
    problems = []
    for rel, info in files.items():
        p = (root / rel).resolve()
        if base not in p.parents:
            problems.append(f"!{rel}")
        elif not p.is_file() or not isinstance(info, dict) or sha256(p) != info.get("sha256"):
            problems.append(rel)
    listed = set(files)
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        rel = str(p.relative_to(root))
        if rel != MANIFEST and rel not in listed and not (allow_later and rel in LATER_FILES):
            problems.append(f"+{rel}")
    return problems


def require_intact(root: str | Path, *, allow_later: bool = True) -> None:
    """BadInputError naming what differs when the bundle is not what its manifest says."""
    problems = verify(root, allow_later=allow_later)
    if problems:
        shown = ", ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
        raise BadInputError(f"{root}: the bundle does not match its manifest.json ({shown}; "
                            "+ added, ! outside the bundle, else changed or missing)")
