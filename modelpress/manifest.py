"""manifest.json: what is in a bundle and how it was made (checksums, versions, recipe, verdict)."""
from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

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


def verify(root: Path) -> list[str]:
    """Files whose checksum no longer matches the manifest (empty when the bundle is intact)."""
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    bad = []
    for rel, info in manifest["files"].items():
        p = root / rel
        if not p.is_file() or sha256(p) != info["sha256"]:
            bad.append(rel)
    return bad
