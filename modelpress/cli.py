"""The ``modelpress`` command line: one subcommand per stage, plus ``run`` (all) and ``gate``.

``run`` publishes a passing bundle to ``<out>/<name>`` and a failed one to ``<out>/<name>.rejected``
(exit 3), so a deploy step that ignores the exit code still finds only the last passing bundle at
``<out>/<name>``. ``gate`` trusts a report only through its manifest. ``sign`` / ``verify`` sign a
bundle with a key pair (the optional ``model-signing`` package). No ``--out`` may be a bundle or
inside one.

Logs and progress bars go to stderr; results (paths, gate verdicts) to stdout. Exit codes come
from ``modelpress.errors`` (the one place that maps errors to codes): 0 ok, 1 internal error,
2 bad input or usage, 3 gate failed, 130 interrupted (SIGINT), 143 terminated (SIGTERM).
Defaults of the stage flags are the recipe dataclasses' defaults; task choices come from the task
registry. With ``--recipe`` (what ``make export|quantize|validate`` pass) the single-stage commands
run the pipeline's own stage functions on a stage folder (``modelpress.stage_commands``): every key
of the recipe means what it means in ``run``, and a flag given sets its recipe key.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import logging
import sys
from importlib import metadata
from typing import Any, Callable, NoReturn

from modelpress.cli_model import add_model_flags
from modelpress.cli_output import json_object
from modelpress.config_check import field_default
from modelpress.deploy_side import PRESS_MODULES
from modelpress.errors import (
    EXIT_BAD_INPUT,
    ModelpressError,
    exit_code_for,
    user_fault,
)
from modelpress.quantize.config import CALIBRATION_METHODS, FORMATS, PRESETS
from modelpress.recipe import ExportConfig, GateConfig, ValidateConfig
from modelpress.runtimes.artifacts import BUNDLE_RUNTIMES
from modelpress.runtimes.target import TARGET_CHOICES
from modelpress.signals import EXIT_SIGINT, EXIT_SIGTERM, Terminated, terminate_as_exception
from modelpress.tasks import task_names
from modelpress.triton import BACKENDS

log = logging.getLogger("modelpress")


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors, which is our bad-input code; keep its one-line message."""

    def error(self, message: str) -> NoReturn:  # noqa: D401
        self.print_usage(sys.stderr)
        print(f"modelpress: error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _set_flag(p: argparse.ArgumentParser, help: str) -> None:
    """``--set SECTION.KEY=VALUE`` (repeatable), gathered in ``args.overrides``."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help=help)


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe TOML file")
    p.add_argument("--out", default="artifacts", help="folder that receives <name>/ (default: artifacts)")
    _set_flag(p, "override a recipe value (TOML syntax), repeatable")


def _from_recipe(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default=None, help="take every flag not given from this recipe")
    _set_flag(p, "override a value of --recipe (TOML syntax), repeatable")


DESCRIPTION = """Distill, export to ONNX, quantize to int8 and validate a Hugging Face model against its
fp32 teacher; a bundle that passes the gate is published to <out>/<name>/.

Exit codes: 0 ok, 1 internal error, 2 bad input or usage, 3 gate failed, 130 SIGINT, 143 SIGTERM.
Logs and progress go to stderr; results to stdout (--json: one JSON object)."""

EXAMPLES = """examples:
  modelpress run --model ./my-classifier                 press a model folder, no recipe file
  modelpress run --model org/name --revision v1.0 --json  a hub model at a tag; one JSON object for CI
  modelpress init --model ./my-classifier --out my.toml  the same as a recipe file, every default written
  modelpress run my.toml --set gate.max_drop=1.0 -q      a recipe, one value changed, warnings only
  modelpress inspect artifacts/my-classifier             where a bundle came from (commit, sha256, versions)
  modelpress triton artifacts/my-classifier models/      a Triton model repository from the bundle
  modelpress gate artifacts/my-classifier --max-drop 1   judge a published run again

modelpress COMMAND --help shows each command's flags."""

RUN_EXAMPLES = """examples:
  modelpress run --model ./tagger                        task read from config.json (ForTokenClassification)
  modelpress run --model ./ranker --task text-ranking    the task given
  modelpress run --model ./encoder --set validate.eval_data=my_eval.jsonl --set calibration.num_samples=256
  modelpress run recipes/minilm.toml --target avx512-vnni --json"""


def _version() -> str:
    try:
        return metadata.version("modelpress")
    except metadata.PackageNotFoundError:
        return "unknown"


def _global_flags(p: argparse.ArgumentParser, *, default: Any) -> None:
    """-v/-q/--json: on the main parser (their defaults) and on every subcommand (SUPPRESS: only a
    flag given there is set), so they work before or after the subcommand."""
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", default=default, help="warnings and errors only")
    p.add_argument(
        "--json",
        action="store_true",
        default=default,
        help="print one JSON object on stdout (schema: docs/cli-output.schema.json)",
    )


class _Subparsers:
    """``add_parser`` with the global flags and an examples-friendly help layout on every subcommand."""

    def __init__(self, actions: Any, common: argparse.ArgumentParser) -> None:
        self._actions, self._common = actions, common

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("description", kwargs.get("help"))
        return self._actions.add_parser(
            name, parents=[self._common], formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs
        )


def _run_args(p: argparse.ArgumentParser) -> None:
    """``run RECIPE`` or ``run --model DIR|HUB_ID`` (a recipe built in code)."""
    p.add_argument("recipe", nargs="?", help="recipe TOML file (or --model instead)")
    add_model_flags(p, required=False)
    p.add_argument("--out", default="artifacts", help="folder that receives <name>/ (default: artifacts)")
    _set_flag(p, "override a recipe value (TOML syntax), repeatable")


def _extra_commands(sub: Any) -> None:
    """init, inspect, triton."""
    p = sub.add_parser(
        "init",
        help="write the recipe run --model would press, every key at its value, commented",
        epilog="example:\n  modelpress init --model ./my-classifier --out my.toml && modelpress run my.toml",
    )
    add_model_flags(p, required=True)
    p.add_argument("--out", default="recipe.toml", help="the recipe file to write (default: recipe.toml)")
    p.add_argument("--force", action="store_true", help="replace --out when it exists")
    _set_flag(p, "a recipe value (TOML syntax) written instead of its default, repeatable")

    p = sub.add_parser(
        "inspect",
        help="what a bundle holds and where it came from: hub commit, weight sha256, versions, target",
        epilog="example:\n  modelpress inspect artifacts/my-classifier --json",
    )
    p.add_argument("bundle")

    p = sub.add_parser(
        "triton",
        help="write a Triton model repository (REPO/<name>/config.pbtxt, REPO/<name>/1/model.*) from a bundle",
        epilog="example:\n  modelpress triton artifacts/my-classifier models/ --runtime openvino\n"
        "  tritonserver --model-repository models/",
    )
    p.add_argument("bundle")
    p.add_argument("repo", help="the model repository folder (created; other models in it are kept)")
    p.add_argument(
        "--runtime",
        choices=tuple(BACKENDS),
        default=None,
        help="which of the bundle's models to serve (default: the first it holds)",
    )
    p.add_argument("--name", default=None, help="the model's name in the repository (default: the bundle's folder)")
    p.add_argument("--force", action="store_true", help="replace REPO/<name> when it exists")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="modelpress",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"modelpress {_version()}")
    _global_flags(parser, default=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, default=argparse.SUPPRESS)  # -q/-v/--json after the subcommand too
    sub = _Subparsers(parser.add_subparsers(dest="command", required=True, parser_class=_Parser), common)

    p = sub.add_parser(
        "run",
        help="all stages of a recipe (or of --model, no recipe file) into <out>/<name>/ "
        "(a failed gate: <out>/<name>.rejected/, exit 3)",
        epilog=RUN_EXAMPLES,
    )
    _run_args(p)
    p.add_argument(
        "--target",
        choices=TARGET_CHOICES,
        default=None,
        help="the CPU the bundle is for (default: the recipe's target; auto = this machine)",
    )

    _extra_commands(sub)

    p = sub.add_parser("distill", help="train the student of a recipe (torchrun-compatible)")
    _recipe_args(p)

    # single-stage commands: None means "from --recipe, else the dataclass default"
    p = sub.add_parser("export", help="export a Hugging Face model to ONNX (parity-checked)")
    p.add_argument(
        "model",
        nargs="?",
        help="hub id | local folder | package:<module> "
        "(with --recipe: a student deployed instead of the recipe's model)",
    )
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--task", choices=task_names(), help="default: feature-extraction")
    p.add_argument("--opset", type=int, help=f"default {field_default(ExportConfig, 'opset')}")
    p.add_argument("--atol", type=float, help=f"default {field_default(ExportConfig, 'atol')}")
    p.add_argument("--trust-remote-code", action="store_true")
    _from_recipe(p)

    p = sub.add_parser(
        "quantize",
        help="static int8 quantization of an ONNX model (--recipe: by quantize.mode, with each runtime's artifact)",
    )
    p.add_argument("onnx", help="fp32 ONNX model (from modelpress export)")
    p.add_argument(
        "--tokenizer",
        "--preprocessor",
        dest="preprocessor",
        help="the model's preprocessor: hub id | folder | package:<module> (not with --recipe: "
        "the preprocessor is the recipe teacher's)",
    )
    p.add_argument("--task", choices=task_names(), help="default: feature-extraction")
    p.add_argument("--data", help="calibration data (.txt/.jsonl/.csv/.tsv/datasets folder)")
    p.add_argument("--out", required=True, help="output int8 .onnx path")
    p.add_argument("--text-field")
    p.add_argument("--num-samples", type=int)
    p.add_argument("--max-length", type=int)
    p.add_argument("--method", choices=CALIBRATION_METHODS)
    p.add_argument("--percentile", type=float)
    p.add_argument("--preset", choices=PRESETS)
    p.add_argument("--format", choices=FORMATS)
    p.add_argument("--no-smoothquant", action="store_true")
    p.add_argument(
        "--target",
        choices=TARGET_CHOICES,
        default=None,
        help="the CPU the int8 model is for (7-bit weights where its int8 GEMM saturates; "
        "default: --recipe's target, else auto = this machine)",
    )
    p.add_argument(
        "--exclude",
        nargs="*",
        default=None,
        metavar="NODE",
        help="kept fp32: ONNX node names or module paths (encoder.layer.3.output.dense)",
    )
    _from_recipe(p)

    p = sub.add_parser("validate", help="compare an ONNX candidate with the PyTorch fp32 teacher")
    p.add_argument("--teacher", help="hub id | folder | package:<module> (default: --recipe's)")
    p.add_argument(
        "--candidate",
        required=True,
        help="candidate ONNX model (int8), or an OpenVINO .xml "
        "(--recipe: the int8 ONNX model, its stage folder beside it)",
    )
    p.add_argument(
        "--runtime",
        choices=tuple(BUNDLE_RUNTIMES),
        default=None,
        help="runtime of the candidate (default: openvino for .xml, else onnxruntime); with "
        "--recipe it replaces validate.runtimes (its model beside the int8 candidate)",
    )
    p.add_argument("--eval-data")
    p.add_argument("--eval-format", choices=_eval_formats())
    p.add_argument("--task", choices=task_names(), help="default: feature-extraction")
    p.add_argument("--out", required=True, help="folder for report.json / report.md")
    p.add_argument("--max-drop", type=float, help=f"default {field_default(GateConfig, 'max_drop')}")
    p.add_argument("--batch-sizes", type=int, nargs="+")
    p.add_argument("--seq-lengths", type=int, nargs="+")
    p.add_argument("--num-samples", type=int)
    _from_recipe(p)

    p = sub.add_parser("gate", help="exit 0 if the run's candidate is within --max-drop of the teacher, else 3")
    p.add_argument("run_dir")
    p.add_argument("--max-drop", type=float, default=None, help="points; default: the recipe's gate.max_drop")
    p.add_argument("--metric", default=None, help="metric key of report.json (default: the run's)")
    p.add_argument(
        "--policy",
        default=None,
        choices=("point", "confident", "lenient"),
        help="how the 95%% interval decides (default: the run's gate.policy)",
    )

    p = sub.add_parser("analyze", help="per-node int8 error of a run (SQNR, weight vs activation), worst first")
    p.add_argument("run_dir")
    p.add_argument("--top", type=int, default=15, help="rows printed (default 15)")
    p.add_argument(
        "--out", default=None, help="folder for analysis.json and plots/ (default: RUN_DIR.analysis, beside the bundle)"
    )

    p = sub.add_parser("sign", help="sign a bundle (every file, manifest included) into BUNDLE/model.sig")
    p.add_argument("bundle")
    p.add_argument(
        "--key",
        required=True,
        help="elliptic-curve private key, PEM (an encrypted one: its password in $MODELPRESS_KEY_PASSWORD)",
    )

    p = sub.add_parser("verify", help="exit 0 if the bundle matches its manifest and its signature, else 2")
    p.add_argument("bundle")
    p.add_argument("--key", required=True, help="the signer's elliptic-curve public key, PEM")

    p = sub.add_parser("engine", help="build a TensorRT engine from the run's Q/DQ model (needs a GPU)")
    p.add_argument("run_dir")
    p.add_argument("--fp16", action="store_true", help="also build an fp16 engine from model.onnx")
    return parser


# -- helpers ----------------------------------------------------------------------------------------
def _eval_formats() -> tuple[str, ...]:
    return next(f.metadata["choices"] for f in dataclasses.fields(ValidateConfig) if f.name == "eval_format")


#: command → "module:function" of its implementation (``modelpress.commands``), imported when the command runs
#: (the lazy registry pattern of the task and runtime registries): ``modelpress --help``, ``gate`` or ``inspect``
#: never import the stages, torch or transformers
COMMANDS: dict[str, str | Callable[[argparse.Namespace], int]] = {
    "run": "modelpress.commands.run:cmd_run",
    "init": "modelpress.commands.init:cmd_init",
    "inspect": "modelpress.commands.inspect_bundle:cmd_inspect",
    "triton": "modelpress.commands.triton_repo:cmd_triton",
    "distill": "modelpress.commands.distill:cmd_distill",
    "export": "modelpress.commands.export:cmd_export",
    "quantize": "modelpress.commands.quantize:cmd_quantize",
    "validate": "modelpress.commands.validate:cmd_validate",
    "gate": "modelpress.commands.gate:cmd_gate",
    "analyze": "modelpress.commands.analyze:cmd_analyze",
    "engine": "modelpress.commands.engine:cmd_engine",
    "sign": "modelpress.commands.signing:cmd_sign",
    "verify": "modelpress.commands.signing:cmd_verify",
}


def command(name: str) -> Callable[[argparse.Namespace], int]:
    """The function of command ``name``, its module imported now (a module the command needs that is not
    installed raises ModuleNotFoundError here, inside the dispatch that maps it to one line)."""
    target = COMMANDS[name]
    if callable(target):  # a function put in the table directly (tests)
        return target
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def _forget_escaped_interrupt() -> None:
    """CPython (3.11, 3.12) remembers a KeyboardInterrupt that ever left an ``exec`` of a string
    (dataclasses, namedtuple and torch.fx build code that way) and, under ``python -m``, ends the
    process by SIGINT (status -2) whatever code we return. Each ``exec`` of a string resets that flag,
    so one harmless one here lets the documented 130 through."""
    exec("None")


class _UsageError(Exception):
    """A usage error under --json: reported in the one JSON object instead of exiting in argparse."""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line; with --json anywhere, a usage error is one JSON object too (exit 2)."""
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if "--json" not in words:
        return parser.parse_args(words)

    def error(message: str) -> NoReturn:
        raise _UsageError(message)

    for p in [parser, *_subparsers(parser)]:
        p.error = error  # type: ignore[method-assign]
    try:
        return parser.parse_args(words)
    except _UsageError as exc:
        print(f"modelpress: error: {exc}", file=sys.stderr)
        command = next((w for w in words if w in COMMANDS), None) or ""
        print(json_object(command, EXIT_BAD_INPUT, lines=[], error=str(exc), result={}))
        sys.exit(EXIT_BAD_INPUT)


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [p for a in actions for p in a.choices.values()]


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # torch._subclasses.fake_tensor logs its cache stats at exit (INFO): after a SIGINT they would follow
    # our one closing line
    for noisy in ("onnx_ir", "onnxscript", "torch", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # "torchvision is not installed. Skipping torchvision::nms" and three more on every image export
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    if args.json:
        return _main_json(args)
    return _dispatch(args)


def _dispatch(args, on_error=None) -> int:
    """The command, its faults mapped to exit codes and one line on stderr (also given to ``on_error``)."""

    def fail(message: str, code: int) -> int:
        print(f"modelpress: error: {message}", file=sys.stderr)
        if on_error is not None:
            on_error(message)
        return code

    try:
        with terminate_as_exception():
            return command(args.command)(args)
    except ModelpressError as exc:
        return fail(str(exc), exit_code_for(exc))
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in PRESS_MODULES:
            raise  # a bug, or a broken install of another package: the traceback says which
        # a deployment host's slim install (pip install modelpress) runs bundles, not the pipeline
        return fail(
            f"{args.command} needs the pressing stack ({exc.name} is not installed): pip install 'modelpress[press]'",
            EXIT_BAD_INPUT,
        )
    except (OSError, MemoryError) as exc:
        message = user_fault(exc)
        if message is None:
            raise  # a bug: the traceback is what its report needs
        return fail(message, EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("modelpress: interrupted (SIGINT); nothing was published", file=sys.stderr)
        if on_error is not None:
            on_error("interrupted (SIGINT); nothing was published")
        _forget_escaped_interrupt()
        return EXIT_SIGINT
    except Terminated:
        print("modelpress: terminated (SIGTERM); nothing was published", file=sys.stderr)
        if on_error is not None:
            on_error("terminated (SIGTERM); nothing was published")
        return EXIT_SIGTERM


def _main_json(args) -> int:
    """--json: what the command prints on stdout is captured, and one JSON object is printed instead."""
    errors: list[str] = []
    captured = io.StringIO()
    args.result = {}
    with contextlib.redirect_stdout(captured):
        code = _dispatch(args, on_error=errors.append)
    lines = captured.getvalue().splitlines()
    print(json_object(args.command, code, lines=lines, error=errors[-1] if errors else None, result=args.result))
    return code


if __name__ == "__main__":
    sys.exit(main())
