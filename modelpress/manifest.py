"""manifest.json: what is in a bundle and how it was made (checksums, versions, recipe, verdict).

Two kinds: a bundle's (``"kind": "bundle"``; every file of the folder is listed, and a file the
manifest does not list is an error, except the few :data:`LATER_FILES` added after publishing), and
a single-stage report's (``"kind": "report"``, written by ``modelpress validate --out DIR``: it lists
only report.json and report.md, because that folder also holds the stage files ``make export`` /
``make quantize`` rewrite). ``modelpress gate`` trusts a report only through a manifest that lists
it and still matches; a folder without ``manifest.json`` is refused.

The manifest is a checksum list, not a signature: whoever can edit a file can edit its sha256 too.
``modelpress sign`` (``modelpress.signing``) signs the whole bundle, manifest included, into
``model.sig``, which is why the manifest lets that one file be added later.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Collection

from modelpress.errors import BadInputError
from modelpress.paths import (
    ENGINE_FP16_JSON,
    ENGINE_JSON,
    FP16_PLAN,
    INT8_PLAN,
    MANIFEST_JSON,
    MODEL_FP16_ONNX,
    REPORT_JSON,
    TIMING_CACHE,
)
from modelpress.fileio import write_json

MANIFEST = MANIFEST_JSON
PACKAGES = (
    "modelpress",
    "torch",
    "transformers",
    "onnx",
    "onnxruntime",
    "openvino",
    "tensorrt",
    "numpy",
    "tokenizers",
)


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


def _file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256(path), "bytes": path.stat().st_size}


def _verdict(gate: dict[str, Any] | None) -> str | None:
    return None if gate is None else ("pass" if gate["passed"] else "fail")


def write_manifest(
    root: Path,
    *,
    recipe: dict[str, Any],
    task: dict[str, Any],
    metrics: dict[str, Any],
    gate: dict[str, Any] | None,
    input_names: list[str],
    provenance: dict[str, Any] | None = None,
) -> Path:
    """A bundle's manifest: every file under ``root``; ``provenance`` (``source``: the models pressed,
    their hub commit and weight sha256; ``target``) is merged in."""
    files = {
        str(p.relative_to(root)): _file_entry(p)
        for p in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    }
    manifest = {
        "schema": 2,
        "kind": "bundle",
        "files": files,
        "versions": versions(),
        "recipe": recipe,
        "task": task,
        "input_names": input_names,
        "metrics": metrics,
        "gate": gate,
        "verdict": _verdict(gate),
        **(provenance or {}),
    }

    return write_json(root / MANIFEST, manifest)


def write_report_manifest(
    root: Path, written: list[Path], *, gate: dict[str, Any] | None, candidate: Path | None = None
) -> Path:
    """A single-stage report's manifest (kind ``"report"``): only the files ``written`` (the
    folder's other files belong to other stages), and the candidate judged, by sha256 (its path
    relative to ``root`` when inside it, so the folder may move; else absolute), which
    :func:`trusted_report` checks: ``make quantize`` may rewrite the candidate after validation."""

    root = Path(root)
    manifest = {
        "schema": 2,
        "kind": "report",
        "files": {str(Path(p).relative_to(root)): _file_entry(Path(p)) for p in written},
        "versions": versions(),
        "candidate": None
        if candidate is None
        else {"path": _candidate_path(root, Path(candidate)), **_file_entry(Path(candidate))},
        "gate": gate,
        "verdict": _verdict(gate),
    }
    return write_json(root / MANIFEST, manifest)


def refuse_foreign_manifest(folder: Path) -> None:
    """BadInputError when ``folder/manifest.json`` is there and is not a validate report's: writing
    the report's manifest would overwrite another tool's (a web app's manifest.json at a project's
    root, for ``modelpress validate --out .``)."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return
    try:
        ours = json.loads(path.read_text(encoding="utf-8")).get("kind") == "report"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        ours = False
    if not ours:
        raise BadInputError(
            f"{path}: not a modelpress validate report's manifest, and the report's would "
            "replace it; give another --out"
        )


def _candidate_path(root: Path, candidate: Path) -> str:
    try:
        return str(candidate.absolute().relative_to(root.absolute()))
    except ValueError:  # outside the report's folder
        return str(candidate.absolute())


#: ``modelpress sign``'s signature of the bundle (the manifest included), inside the bundle
SIGNATURE = "model.sig"
#: files a bundle may gain after publishing without breaking it (the engine stage adds these on a GPU;
#: the signature, which covers the manifest, cannot be listed in it)
LATER_FILES = (
    INT8_PLAN,
    FP16_PLAN,
    ENGINE_JSON,
    ENGINE_FP16_JSON,
    TIMING_CACHE,
    MODEL_FP16_ONNX,
    SIGNATURE,
)


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of ``root``; BadInputError (one line) when absent or not a manifest."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise BadInputError(
            f"{root}: no {MANIFEST} (not a published modelpress bundle or validate report; "
            "nothing in it can be trusted)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest["files"], dict):
            raise TypeError
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise BadInputError(f"{path}: not a valid manifest") from None
    return manifest


def verify(root: str | Path, *, allow_later: bool = False) -> list[str]:
    """What no longer matches the manifest, one entry per file (empty when the bundle is intact):
    ``name`` for a changed or missing file, ``+name`` for a file the manifest does not list, and
    ``!name`` for a manifest entry that points outside the bundle (``../../etc/passwd``).
    ``allow_later``: the engine files ``modelpress engine`` adds after publishing, and the signature
    ``modelpress sign`` adds, are not reported. A report manifest (kind ``"report"``) checks only the
    files it lists: the stage folder's other files are not its own."""
    return _problems(Path(root), read_manifest(root), allow_later=allow_later)


#: a listed file at least this big that the caller does not open (``require_intact(opened=...)``: ``load()``
#: opens one of a bundle's models, not the fp32 export beside it) is checked by its size, not hashed — an LLM
#: bundle's 1.9 GB fp32 weights took 1.5 s of a 2.2 s ``load()``; ``modelpress verify`` hashes every file
UNOPENED_BYTES = 64 * 2**20


def _problems(
    root: Path, manifest: dict[str, Any], *, allow_later: bool, opened: Collection[str] | None = None
) -> list[str]:
    """:func:`verify` on a manifest already read (one read: it is what the caller then trusts)."""
    files = dict(manifest["files"])
    base = root.resolve()
    problems = []
    for rel, info in files.items():
        p = (root / rel).resolve()
        if base not in p.parents:
            problems.append(f"!{rel}")
        elif not p.is_file() or not isinstance(info, dict):
            problems.append(rel)
        elif opened is not None and rel not in opened and int(info.get("bytes") or 0) >= UNOPENED_BYTES:
            if p.stat().st_size != info.get("bytes"):
                problems.append(rel)
        elif sha256(p) != info.get("sha256"):
            problems.append(rel)
    if manifest.get("kind", "bundle") == "report":
        return problems
    listed = set(files)
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        rel = str(p.relative_to(root))
        if rel != MANIFEST and rel not in listed and not (allow_later and rel in LATER_FILES):
            problems.append(f"+{rel}")
    return problems


def require_intact(
    root: str | Path, *, allow_later: bool = True, opened: Collection[str] | None = None
) -> dict[str, Any]:
    """The manifest; BadInputError naming what differs when the bundle is not what it says.
    ``opened``: the files the caller will read (paths relative to ``root``); the other listed files of
    :data:`UNOPENED_BYTES` or more are checked by size (None: every file is hashed)."""
    manifest = read_manifest(root)
    problems = _problems(Path(root), manifest, allow_later=allow_later, opened=opened)
    if problems:
        shown = ", ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
        raise BadInputError(
            f"{root}: the bundle does not match its manifest.json ({shown}; "
            "+ added, ! outside the bundle, else changed or missing)"
        )
    return manifest


def trusted_report(root: str | Path) -> Path:
    """``report.json`` of a bundle or a validate report folder, once its manifest vouches for it:
    the manifest is there, lists it and still matches, and a validate report's candidate is still
    the file it judged (BadInputError, one line, otherwise)."""
    root = Path(root)
    if not (root / REPORT_JSON).is_file():
        raise BadInputError(f"{root / REPORT_JSON}: no {REPORT_JSON} (run the pipeline first)")
    manifest = require_intact(root)
    if REPORT_JSON not in manifest["files"]:
        raise BadInputError(f"{root / MANIFEST}: does not list {REPORT_JSON}; the report is not trusted")
    judged = manifest.get("candidate") if manifest.get("kind") == "report" else None
    if isinstance(judged, dict):
        path = Path(str(judged.get("path")))
        path = path if path.is_absolute() else root / path
        if not path.is_file() or sha256(path) != judged.get("sha256"):
            state = "has changed since" if path.is_file() else "is gone since"
            raise BadInputError(
                f"{path}: the candidate {state} this report judged it; validate it again "
                "(modelpress validate / make validate)"
            )
    return root / REPORT_JSON


def require_not_failed(root: str | Path, manifest: dict[str, Any]) -> None:
    """BadInputError when the manifest's verdict is ``fail`` (the gate rejected this bundle)."""
    if manifest.get("verdict") == "fail":
        raise BadInputError(
            f'{root}: the gate failed this bundle (manifest verdict "fail"); '
            "load(..., allow_failed=True) opens it for inspection"
        )
