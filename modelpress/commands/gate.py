"""``modelpress gate``: judge a published run (or validate report folder) again, through its manifest.

Place in the layers: the CLI layer, under ``modelpress.cli``, which names this module in its command
table and imports it only when the command runs."""

from __future__ import annotations

from pathlib import Path

from modelpress.errors import EXIT_GATE_FAILED, EXIT_OK
from modelpress.manifest import trusted_report
from modelpress.recipe import GateConfig, section_config
from modelpress.validate.gate import gate_report
from modelpress.validate.report import read_json


def cmd_gate(args) -> int:
    if args.max_drop is not None:
        section_config(GateConfig, "gate", {"max_drop": args.max_drop})  # --max-drop -1 is refused
    # a bundle (passing or .rejected) or a validate report folder: its manifest vouches for the report;
    # a folder without one is refused, since anyone could have written its report.json
    report = read_json(trusted_report(Path(args.run_dir)))
    result = gate_report(report, max_drop=args.max_drop, metric=args.metric, policy=args.policy)
    print(result.line())
    return EXIT_OK if result.passed else EXIT_GATE_FAILED
