"""What the command line prints for machines: ``--json``'s one object, and ``modelpress inspect``.

With ``--json`` every command prints exactly one JSON object on stdout (``docs/cli-output.schema.json``
documents it; the tests validate against it): ``command``, ``exit_code``, ``ok``, ``error`` (the one
line a failure prints, else null), ``lines`` (what the command would have printed on stdout), and
per command what CI wants without parsing report.json: ``run`` adds the verdict, the gate's interval,
the artifact chosen, the paths and the timings; ``inspect`` the bundle's provenance; ``init`` and
``triton`` the paths written. Logs and progress bars stay on stderr.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from modelpress.manifest import read_manifest, verify

#: the ``--json`` object's layout version (bump on an incompatible change)
JSON_SCHEMA_VERSION = 1


def json_object(command: str, exit_code: int, *, lines: list[str], error: str | None, result: dict[str, Any]) -> str:
    out = {
        "schema": JSON_SCHEMA_VERSION,
        "command": command,
        "exit_code": exit_code,
        "ok": exit_code == 0,
        "error": error,
        "lines": lines,
        **result,
    }
    return json.dumps(out, indent=2, default=str)


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}


def run_result(bundle: Path, *, seconds: float, inferred: dict[str, Any] | None) -> dict[str, Any]:
    """``run``'s part of the ``--json`` object, from the published bundle's report and bundle.json."""
    report = _read(bundle / "report.json")
    meta = _read(bundle / "bundle.json")
    gate = report.get("gate") or None
    quantization = report.get("quantization") or {}
    runtimes = list((meta.get("runtimes") or {}).keys())
    runtime = runtimes[0] if runtimes else None
    auto = quantization.get("auto") or {}
    models = report.get("models") or {}
    return {
        "verdict": None if gate is None else ("pass" if gate.get("passed") else "fail"),
        "gate": None
        if gate is None
        else {
            "metric": gate.get("metric"),
            "teacher": gate.get("teacher"),
            "candidate": gate.get("candidate"),
            "drop": gate.get("drop"),
            "interval": gate.get("drop_ci95"),
            "max_drop": gate.get("max_drop"),
            "policy": gate.get("policy"),
            "n": gate.get("n"),
            "note": gate.get("note"),
        },
        "artifact": {
            "runtime": runtime,
            "file": meta["runtimes"][runtime] if runtime else None,
            "runtimes": runtimes,
            "quantize_mode": quantization.get("mode"),
            "chosen": auto.get("chosen") if isinstance(auto, dict) else None,
        },
        "task": {
            "name": (meta.get("task") or {}).get("task"),
            "inferred": bool(inferred and inferred.get("inferred")),
            "architecture": (inferred or {}).get("architecture"),
        },
        "data": report.get("data"),
        "paths": {
            "bundle": str(bundle),
            "report": str(bundle / "report.json"),
            "manifest": str(bundle / "manifest.json"),
        },
        "timings": {
            "total_s": round(seconds, 2),
            "calibration_s": quantization.get("calibration_seconds"),
            "eval_s": {name: m.get("eval_seconds") for name, m in models.items() if isinstance(m, dict)},
        },
    }


def inspect_result(bundle: Path) -> dict[str, Any]:
    """What ``modelpress inspect`` shows: the manifest's provenance, the verdict, the files."""
    manifest = read_manifest(bundle)
    problems = verify(bundle, allow_later=True)
    recipe = manifest.get("recipe") or {}
    return {
        "bundle": str(bundle),
        "name": recipe.get("name"),
        "task": (manifest.get("task") or {}).get("task"),
        "verdict": manifest.get("verdict"),
        "intact": not problems,
        "mismatches": problems,
        "source": manifest.get("source"),
        "target": manifest.get("target"),
        "versions": manifest.get("versions"),
        "files": {k: v.get("sha256") for k, v in (manifest.get("files") or {}).items() if isinstance(v, dict)},
    }


def inspect_lines(info: dict[str, Any]) -> list[str]:
    lines = [
        f"bundle: {info['bundle']}",
        f"name: {info['name']}  task: {info['task']}  verdict: {info['verdict']}",
        "files match the manifest"
        if info["intact"]
        else f"DOES NOT MATCH its manifest: {', '.join(info['mismatches'])}",
    ]
    for role, src in (info.get("source") or {}).items():
        lines.append(f"{role}: {src.get('ref')}" + (f" (revision {src['revision']})" if src.get("revision") else ""))
        lines.append(f"  commit: {src.get('commit') or '(not a hub snapshot)'}")
        for name, digest in (src.get("weights") or {}).items():
            lines.append(f"  weights {name}: sha256 {digest}")
    target = info.get("target") or {}
    if target:
        lines.append(f"target: {target.get('name')} ({'this machine' if target.get('detected') else 'declared'})")
    versions = info.get("versions") or {}
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    for name, digest in (info.get("files") or {}).items():
        lines.append(f"file {name}: sha256 {digest}")
    if info.get("source") is None:
        lines.append("(pressed before provenance was recorded: no source models in the manifest)")
    return lines
