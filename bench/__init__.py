"""Benchmarks (`make bench` and friends): not installed, they read ../shared."""
from __future__ import annotations

import json
from pathlib import Path


def write_results(path: str | Path, result: dict) -> None:
    """The bench's JSON results at ``path`` (its folder made), and a line saying where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
