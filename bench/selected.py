"""The benches' "selected" row: the artifact a modelpress run ships by default (its selection, opened
by ``modelpress.bundle.load(bundle)`` exactly as a deployment opens it), timed in the same interleaved rounds
as the peers, and its ratios to them.

Each bench presses with both runtimes and the default ``[select]`` table, adds :data:`SELECTED` to its
interleaved predictors (:func:`open_selected`) and stores :func:`selected_record` as its JSON's
``selected``: the candidate, the run's reason line, the press's own ratio to ORT fp32 at the selection
shape, and, per timed shape, the ratio to the fastest peer row, to ORT fp32 and to every other row,
each with validate.select's paired bootstrap interval over the rounds. ``python -m bench.bars`` reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from modelpress.bundle import load
from modelpress.validate.select import ratio_interval

#: the row name of the selected artifact in every bench
SELECTED = "modelpress-selected"
#: the rows that are ours (not peers): the fastest-peer ratio skips them
OURS = ("modelpress", "student-")


def is_peer(name: str) -> bool:
    return not name.startswith(OURS)


def read_selection(bundle: str | Path) -> dict[str, Any] | None:
    """The run's ``selection`` (report.json), or None when the run made none (an older bundle)."""
    report = Path(bundle) / "report.json"
    if not report.is_file():
        return None
    return json.loads(report.read_text(encoding="utf-8")).get("selection")


def open_selected(bundle: str | Path, threads: int):
    """The bundle's default as ``modelpress.bundle.load`` opens it (a gate-failed bundle too: the bench still
    times what the run chose, and the record says the gate failed), with no thread pool spinning between
    runs, as every other row of an interleaved bench (PEERS.md pitfall 9)."""
    opened = load(bundle, threads=threads, allow_failed=True, back_to_back=False)
    opened.name = SELECTED  # the bench's row name (the runner keeps the candidate's)
    return opened


def shape_ratios(times: Mapping[str, Sequence[float]], *, reference: str = "ort-fp32") -> dict[str, Any]:
    """The selected row's time ÷ each other row's at one shape (paired per interleaved round, the ratio
    of medians with its 95 % bootstrap interval), and which peer row was fastest."""
    mine = times[SELECTED]
    vs = {n: ratio_interval(mine, t).to_dict() for n, t in times.items() if n != SELECTED}
    peers = [n for n in vs if is_peer(n)]
    out: dict[str, Any] = {"vs": vs}
    if peers:
        fastest = min(peers, key=lambda n: (float(np.median(times[n])), n))
        out["vs_fastest_peer"] = {"peer": fastest, **vs[fastest]}
    if reference in vs:
        out["vs_ort_fp32"] = vs[reference]
    return out


def selected_record(
    bundle: str | Path,
    rounds: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    reference: str = "ort-fp32",
    gate_passed: bool | None = None,
) -> dict[str, Any]:
    """The JSON's ``selected``: ``rounds`` maps a shape (``b32xs128``, ``workload``, …) to each row's
    per-round times, the selected row's among them."""
    sel = read_selection(bundle)
    if sel is None:
        return {"candidate": None, "note": f"{bundle}: its report has no selection (pressed before it existed)"}
    chosen = next((c for c in sel.get("candidates", ()) if c["name"] == sel["chosen"]), {})
    record = {
        "candidate": sel["chosen"],
        "runtime": sel["default"]["runtime"],
        "file": sel["default"]["file"],
        "reason": sel["reason"],
        "selection_shape": sel["shape"],
        "selection_passed": sel["passed"],
        "press_vs_ort_fp32": chosen.get("ratio"),  # the run's own measure at the selection shape
        "ratios": {shape: shape_ratios(times, reference=reference) for shape, times in rounds.items()},
    }
    if gate_passed is not None:
        record["gate_passed"] = gate_passed
    return record


def print_selected(record: Mapping[str, Any], label: str = "") -> None:
    """One line per shape: what the bench says about the selected artifact."""
    if not record.get("candidate"):
        print(f"{label}selected: not measured ({record.get('note', 'no selection')})")
        return
    print(f"{label}selected: {record['candidate']} ({record['runtime']}): {record['reason']}")
    for shape, r in record["ratios"].items():
        cells = []
        for key, what in (("vs_fastest_peer", "fastest peer"), ("vs_ort_fp32", "ORT fp32")):
            if key in r:
                v = r[key]
                peer = f" {v['peer']}" if "peer" in v else ""
                cells.append(f"÷ {what}{peer} {v['value']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]")
        print(f"{label}  {shape}: " + ", ".join(cells))
