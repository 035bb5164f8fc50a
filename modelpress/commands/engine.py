"""``modelpress engine``: TensorRT plans from a run's Q/DQ model (needs a GPU).

Place in the layers: the CLI layer, under ``modelpress.cli``, which names this module in its command
table and imports it only when the command runs."""

from __future__ import annotations

from pathlib import Path

from modelpress.errors import EXIT_OK
from modelpress.run_commands import engine_stage


def cmd_engine(args) -> int:
    out = engine_stage(Path(args.run_dir), fp16=args.fp16)
    print(f"engine: {out}")
    return EXIT_OK
