"""Run the distillation stage alone: ``python -m modelpress.distill SECTION --teacher REF --task TASK --out DIR``.

SECTION is a ``.toml`` or ``.json`` file holding the ``[distill]`` keys (top level, or under a
``distill`` table, so a whole recipe works too). Launch the same command under
``torchrun --nproc_per_node N -m modelpress.distill ...`` for DDP. ``modelpress distill RECIPE`` is the
user-facing command; this one exists for tests and for running the stage on its own.
``--kill-at-step N`` SIGKILLs the process after optimizer step N (fault-injection tests).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]  # the same API

from modelpress.distill.config import DistillConfig
from modelpress.distill.pipeline import run_distillation
from modelpress.errors import BadInputError, ModelpressError, exit_code_for
from modelpress.models import resolve_model_ref
from modelpress.tasks import task_names


def _read_section(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadInputError(f"{path}: not valid {path.suffix[1:] or 'toml'} ({exc})") from None
    return data.get("distill", data)


def _kill_at(step: int):
    def hook(current: int) -> None:
        if current == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelpress.distill", description=__doc__.splitlines()[0])
    parser.add_argument("section", type=Path, help="TOML/JSON file with the [distill] keys")
    parser.add_argument("--teacher", required=True, help="folder, hub id or package:<name>")
    parser.add_argument("--task", default="feature-extraction", choices=task_names())
    parser.add_argument(
        "--task-options",
        default="",
        metavar="JSON",
        help='the task\'s [task_options] as JSON, e.g. \'{"pooling": "cls"}\'',
    )
    parser.add_argument("--out", required=True, type=Path, help="run folder (student/ and distill_ckpt/ go here)")
    parser.add_argument("--kill-at-step", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        cfg = DistillConfig.from_dict(_read_section(args.section), base_dir=args.section.resolve().parent)
        options = json.loads(args.task_options) if args.task_options else {}
        dest = run_distillation(
            cfg,
            teacher=resolve_model_ref(args.teacher, base_dir=Path.cwd()),
            task=args.task,
            task_options=options,
            out_dir=args.out,
            on_step=_kill_at(args.kill_at_step) if args.kill_at_step is not None else None,
        )
    except ModelpressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
