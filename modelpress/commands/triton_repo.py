"""``modelpress triton``: a Triton model repository from a bundle.

Place in the layers: the CLI layer, under ``modelpress.cli``, which names this module in its command
table and imports it only when the command runs."""

from __future__ import annotations

from modelpress.errors import EXIT_OK
from modelpress.triton import write_repository


def cmd_triton(args) -> int:
    folder = write_repository(args.bundle, args.repo, runtime=args.runtime, name=args.name, force=args.force)
    args.result = {"paths": {"model": str(folder), "config": str(folder / "config.pbtxt")}}
    print(f"triton model: {folder} (config {folder / 'config.pbtxt'})")
    return EXIT_OK
