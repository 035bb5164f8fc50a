"""``modelpress init``: the recipe ``run --model`` would press, written as a commented file.

Place in the layers: the CLI layer, under ``modelpress.cli``, which names this module in its command
table and imports it only when the command runs."""

from __future__ import annotations

from modelpress.cli_model import write_init
from modelpress.errors import EXIT_OK


def cmd_init(args) -> int:
    out = write_init(args)
    args.result = {"paths": {"recipe": str(out)}}
    print(f"recipe: {out}")
    return EXIT_OK
