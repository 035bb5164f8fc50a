"""``modelpress inspect``: what a bundle holds and where it came from.

Place in the layers: the CLI layer, under ``modelpress.cli``, which names this module in its command
table and imports it only when the command runs."""

from __future__ import annotations

from pathlib import Path

from modelpress.cli_output import inspect_lines, inspect_result
from modelpress.errors import EXIT_OK


def cmd_inspect(args) -> int:
    info = inspect_result(Path(args.bundle))
    args.result = {"inspect": info}
    for line in inspect_lines(info):
        print(line)
    return EXIT_OK
