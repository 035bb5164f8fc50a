"""``modelpress analyze``: the per-node int8 error of a run, worst first, written beside the bundle.

Place in the layers: the CLI layer, under ``modelpress.cli``, which names this module in its command
table and imports it only when the command runs."""

from __future__ import annotations

from pathlib import Path

from modelpress.errors import EXIT_OK
from modelpress.paths import analysis_dir
from modelpress.run_commands import analyze_run


def cmd_analyze(args) -> int:
    # beside the bundle, never in it (analyze_run refuses that): a file its manifest does not list
    # would break gate and load()
    out = Path(args.out) if args.out else analysis_dir(Path(args.run_dir))
    errors = analyze_run(Path(args.run_dir), out)
    print(f"{'module (ONNX node)':<56}{'SQNR dB':>9}{'weight-only':>13}{'act-only':>10}{'rel L2':>9}")
    for e in errors[: args.top]:
        print(
            f"{e.label:<56}{e.sqnr_db:>9.1f}{e.weight_only_sqnr_db:>13.1f}{e.activation_only_sqnr_db:>10.1f}"
            f"{e.rel_l2:>9.4f}"
        )
    print(f"analysis: {out / 'analysis.json'}")
    return EXIT_OK
