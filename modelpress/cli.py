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
import copy
import dataclasses
import io
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from modelpress.errors import (
    EXIT_BAD_INPUT,
    EXIT_GATE_FAILED,
    EXIT_OK,
    BadInputError,
    ModelpressError,
    exit_code_for,
    user_fault,
)
from modelpress.paths import REPORT_JSON, REPORT_MD
from modelpress.signals import EXIT_SIGINT, EXIT_SIGTERM, Terminated, terminate_as_exception

log = logging.getLogger("modelpress")


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors, which is our bad-input code; keep its one-line message."""

    def error(self, message: str) -> None:  # noqa: D401
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
    from importlib import metadata  # stdlib, but slow to import (email, zipfile): only for --version

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
    from modelpress.cli_model import add_model_flags

    p.add_argument("recipe", nargs="?", help="recipe TOML file (or --model instead)")
    add_model_flags(p, required=False)
    p.add_argument("--out", default="artifacts", help="folder that receives <name>/ (default: artifacts)")
    _set_flag(p, "override a recipe value (TOML syntax), repeatable")


def _extra_commands(sub: Any) -> None:
    """init, inspect, triton."""
    from modelpress.cli_model import add_model_flags
    from modelpress.triton import BACKENDS

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
    from modelpress.config_check import field_default as d
    from modelpress.recipe import ExportConfig, GateConfig
    from modelpress.quantize.config import CALIBRATION_METHODS, FORMATS, PRESETS
    from modelpress.runtimes.artifacts import BUNDLE_RUNTIMES
    from modelpress.runtimes.target import TARGET_CHOICES
    from modelpress.tasks import task_names

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
    p.add_argument("--opset", type=int, help=f"default {d(ExportConfig, 'opset')}")
    p.add_argument("--atol", type=float, help=f"default {d(ExportConfig, 'atol')}")
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
    p.add_argument("--max-drop", type=float, help=f"default {d(GateConfig, 'max_drop')}")
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
    from modelpress.recipe import ValidateConfig

    return next(f.metadata["choices"] for f in dataclasses.fields(ValidateConfig) if f.name == "eval_format")


def _stage_recipe(args) -> Any:
    """The recipe named by ``--recipe`` (with ``--set``), or None."""
    if not args.recipe:
        if args.overrides:
            raise BadInputError("--set needs --recipe")
        return None
    from modelpress.recipe import load_recipe

    return load_recipe(args.recipe, args.overrides)


#: a stage command's flag → the recipe key it sets under ``--recipe`` (its value wins over the recipe's)
_FLAG_KEYS = {
    "export": {
        "model": "student",
        "task": "task",
        "opset": "export.opset",
        "atol": "export.atol",
        "trust_remote_code": "trust_remote_code",
    },
    "quantize": {
        "task": "task",
        "data": "calibration.data",
        "text_field": "calibration.text_field",
        "num_samples": "calibration.num_samples",
        "max_length": "calibration.max_length",
        "method": "quantize.calibration_method",
        "percentile": "quantize.percentile",
        "preset": "quantize.preset",
        "format": "quantize.format",
        "no_smoothquant": "quantize.smoothquant",
        "exclude": "quantize.nodes_to_exclude",
        "target": "target",
    },
    "validate": {
        "teacher": "teacher",
        "task": "task",
        "eval_data": "validate.eval_data",
        "eval_format": "validate.eval_format",
        "batch_sizes": "validate.batch_sizes",
        "seq_lengths": "validate.seq_lengths",
        "num_samples": "validate.num_samples",
        "max_drop": "gate.max_drop",
        "runtime": "validate.runtimes",
    },
}


def _flag_value(dest: str, value: Any) -> Any:
    """A flag's value as its recipe key takes it (``None``: the flag was not given)."""
    if value is None or value is False:
        return None
    if dest == "no_smoothquant":
        return False
    if dest == "runtime":
        return [value]
    return list(value) if isinstance(value, (list, tuple)) else value


def _given_flags(args) -> dict[str, tuple[str, Any]]:
    """{recipe key: (flag, value)} of the stage flags given on the command line."""
    given = {}
    for dest, key in _FLAG_KEYS[args.command].items():
        value = _flag_value(dest, getattr(args, dest, None))
        if value is not None:
            given[key] = ("MODEL" if dest == "model" else f"--{dest.replace('_', '-')}", value)
    return given


def _recipe_with_flags(args, given: dict[str, tuple[str, Any]]) -> Any:
    """``--recipe`` (with ``--set``) and the stage flags ``given`` on top of it, as if written in the
    recipe (a written length the model cannot take is refused, not clipped)."""
    from modelpress.recipe import recipe_from_dict

    recipe = _stage_recipe(args)
    raw = copy.deepcopy(dict(recipe.raw))
    for key, (_, value) in given.items():
        *sections, name = key.split(".")
        table = raw
        for section in sections:
            table = table.setdefault(section, {})
        table[name] = value
        if key == "task" and value != recipe.task:
            raw.pop("task_options", None)  # a --task of its own: its defaults
    return recipe_from_dict(raw, source=Path(recipe.source) if recipe.source else None)


@contextlib.contextmanager
def _flags_named(given: dict[str, tuple[str, Any]]):
    """An error about a recipe key a flag set names the flag (``--seq-lengths: ...``)."""
    try:
        yield
    except BadInputError as exc:
        key = next((k for k in given if str(exc).startswith(f"{k}:")), None)
        if key is None:
            raise
        raise BadInputError(given[key][0] + str(exc)[len(key) :]) from None


def _pick(flag: Any, recipe: Any, section: str, key: str, cls: type) -> Any:
    """A flag's value, else the recipe's, else the dataclass default."""
    from modelpress.config_check import field_default

    if flag is not None:
        return flag
    if recipe is not None:
        return getattr(getattr(recipe, section) if section else recipe, key)
    return field_default(cls, key)


def _task(args, recipe, model_ref: str | None):
    from modelpress.tasks import configure_task

    name = args.task or (recipe.task if recipe else "feature-extraction")
    options = recipe.task_options if recipe and not args.task else {}  # a --task of its own: its defaults
    return configure_task(name, options, model_dir=model_ref if model_ref and Path(model_ref).is_dir() else None)


def _model_ref(given: str | None, recipe, what: str) -> str:
    from modelpress.models import resolve_model_ref

    ref = given or (
        recipe.student or recipe.teacher if recipe and what == "model" else recipe.teacher if recipe else None
    )
    if not ref:
        raise BadInputError(f"{what}: give it, or --recipe")
    return resolve_model_ref(ref)


def _refuse_bundle_file(out: str) -> None:
    """A stage's output file must not land in a bundle (its manifest would no longer match)."""
    from modelpress.paths import refuse_inside_bundle

    refuse_inside_bundle(Path(out))


def _run_recipe(args) -> tuple[Any, dict[str, Any] | None]:
    """The recipe file (with --set, --target), or the recipe --model builds; and what --task auto read."""
    from modelpress.cli_model import recipe_for_model
    from modelpress.recipe import load_recipe

    if args.recipe and args.model:
        raise BadInputError("run: give a recipe file or --model, not both")
    if not args.recipe and not args.model:
        raise BadInputError("run: give a recipe file, or --model DIR|HUB_ID to press a model without one")
    if args.recipe:
        if args.task is not None or args.revision:
            raise BadInputError("--task/--revision go with --model; in a recipe they are the keys task and revision")
        overrides = [*args.overrides, *([f'target="{args.target}"'] if args.target else [])]
        return load_recipe(args.recipe, overrides), None
    return recipe_for_model(args)


# -- commands -----------------------------------------------------------------------------------
def cmd_run(args) -> int:
    from modelpress.cli_output import run_result
    from modelpress.pipeline import run_recipe

    started = time.perf_counter()
    recipe, inferred = _run_recipe(args)
    outcome = run_recipe(recipe, Path(args.out))
    args.result = run_result(outcome.bundle, seconds=time.perf_counter() - started, inferred=inferred)
    if outcome.rejected:
        kept = outcome.bundle.with_name(recipe.name)
        print(
            f"rejected: {outcome.bundle} (the gate failed; "
            + (f"the last passing bundle {kept} is unchanged)" if kept.is_dir() else "no passing bundle yet)")
        )
    else:
        print(f"bundle: {outcome.bundle}")
    if outcome.gate is not None:
        print(outcome.gate.line())
        if not outcome.gate.passed:
            return EXIT_GATE_FAILED
    return EXIT_OK


def cmd_distill(args) -> int:
    from modelpress.distill.stage import train_student
    from modelpress.models import resolve_model_ref
    from modelpress.paths import refuse_inside_bundle
    from modelpress.recipe import load_recipe
    from modelpress.tasks import configure_task

    refuse_inside_bundle(Path(args.out))
    recipe = load_recipe(args.recipe, args.overrides)
    teacher_ref = resolve_model_ref(recipe.teacher)
    task = configure_task(
        recipe.task, recipe.task_options, model_dir=teacher_ref if Path(teacher_ref).is_dir() else None
    )
    student = train_student(recipe, teacher_ref, task, Path(args.out))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"student: {student}")
    return EXIT_OK


def cmd_export(args) -> int:
    if Path(args.out).is_dir():
        raise BadInputError(f"--out {args.out}: is a folder; give the .onnx file to write")
    _refuse_bundle_file(args.out)
    if args.recipe:
        from modelpress import stage_commands

        given = _given_flags(args)
        with _flags_named(given):
            result = stage_commands.export(_recipe_with_flags(args, given), Path(args.out)).result
    else:
        result = _export_flags(args)
    shape = "x".join(map(str, result.parity.feed_shape))
    print(
        f"onnx: {result.path} (inputs {', '.join(result.input_names)}; parity max |diff| "
        f"{result.parity.max_abs_diff:.2e} on a {shape} batch)"
    )
    return EXIT_OK


def _export_flags(args) -> Any:
    """``modelpress export MODEL`` without a recipe: the flags and the dataclass defaults."""
    from modelpress.export.exporters import export_model
    from modelpress.models import load_model_and_preprocessor
    from modelpress.recipe import ExportConfig, section_config

    _stage_recipe(args)  # --set without --recipe is refused
    opset = _pick(args.opset, None, "export", "opset", ExportConfig)
    atol = _pick(args.atol, None, "export", "atol", ExportConfig)
    section_config(ExportConfig, "export", {"opset": opset, "atol": atol})  # the recipe's checks on flags too
    ref = _model_ref(args.model, None, "model")
    task = _task(args, None, ref)
    model, preprocessor = load_model_and_preprocessor(ref, task, trust_remote_code=args.trust_remote_code)
    return export_model(task, model, preprocessor, args.out, opset=opset, atol=atol)


def cmd_quantize(args) -> int:
    from modelpress.fileio import load_onnx
    from modelpress.memory import process_peak_rss_mb

    load_onnx(args.onnx, load_external_data=False)  # not a model: one line now, before any loading
    _refuse_bundle_file(args.out)
    if args.recipe:
        from modelpress import stage_commands

        if args.preprocessor:
            raise BadInputError(
                "--tokenizer: with --recipe the preprocessor is the recipe teacher's (--set teacher=... to change it)"
            )
        given = _given_flags(args)
        with _flags_named(given):
            done = stage_commands.quantize(_recipe_with_flags(args, given), Path(args.onnx), Path(args.out))
        summary, side, also = done.outcome.summary, done.record, done.artifacts
    else:
        summary, side, also = _quantize_flags(args), Path(args.out).with_suffix(".quantization.json"), {}
    print(
        f"int8: {args.out} ({len(summary.quantized_nodes)} nodes int8, {len(summary.fp32_nodes)} fp32, "
        f"{summary.weight_bits}-bit weights; calibration {summary.calibration_seconds}s, process peak RSS "
        f"{process_peak_rss_mb()} MB; details {side})"
    )
    for runtime, path in also.items():
        print(f"{runtime}: {path}")
    return EXIT_OK


def _quantize_flags(args) -> Any:
    """``modelpress quantize`` without a recipe: static int8 from the flags and the dataclass defaults;
    the record goes to ``<out>.quantization.json``."""
    from modelpress.calibration_data.feeds import ExampleFeed
    from modelpress.fileio import graph_input_shapes, load_onnx, write_json
    from modelpress.memory import process_peak_rss_mb
    from modelpress.modalities import get_modality
    from modelpress.recipe import CalibrationConfig, section_config
    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.static import quantize_static
    from modelpress.runtimes.target import resolve_target

    _stage_recipe(args)  # --set without --recipe is refused
    graph = load_onnx(args.onnx, load_external_data=False)
    ref = _model_ref(args.preprocessor, None, "--tokenizer")
    task = _task(args, None, ref)
    changes = {
        "calibration_method": args.method,
        "percentile": args.percentile,
        "preset": args.preset,
        "format": args.format,
        "smoothquant": False if args.no_smoothquant else None,
        "nodes_to_exclude": tuple(args.exclude) if args.exclude is not None else None,
    }
    cfg = (
        QuantizeConfig()
        .with_(**{k: v for k, v in changes.items() if v is not None})
        .for_target(resolve_target(args.target or "auto"))
    )
    cal = section_config(
        CalibrationConfig,
        "calibration",
        {
            "data": _pick(args.data, None, "calibration", "data", CalibrationConfig),
            "text_field": _pick(args.text_field, None, "calibration", "text_field", CalibrationConfig),
            "num_samples": _pick(args.num_samples, None, "calibration", "num_samples", CalibrationConfig),
            "max_length": _pick(args.max_length, None, "calibration", "max_length", CalibrationConfig),
        },
    )
    modality = get_modality(task.modality)
    preprocessor = modality.load_preprocessor(ref)
    names = modality.check_graph_inputs(tuple(i.name for i in graph.graph.input), source=args.onnx)
    examples = modality.calibration_set(cal, preprocessor)
    encoder = modality.encoder(
        preprocessor, input_names=names, max_length=cal.max_length, input_shapes=graph_input_shapes(args.onnx)
    )
    summary = quantize_static(args.onnx, args.out, ExampleFeed(examples, encoder, batch_size=cal.batch_size), cfg)
    write_json(
        Path(args.out).with_suffix(".quantization.json"),
        {**summary.to_dict(), "process_peak_rss_mb": process_peak_rss_mb()},
    )
    return summary


def cmd_validate(args) -> int:
    from modelpress.manifest import refuse_foreign_manifest, write_report_manifest
    from modelpress.paths import refuse_inside_bundle
    from modelpress.validate.gate import GateResult
    from modelpress.validate.report import write_reports

    out = Path(args.out)
    refuse_inside_bundle(out)
    refuse_foreign_manifest(out)  # the report's manifest.json goes there
    if args.recipe:
        from modelpress import stage_commands

        given = _given_flags(args)
        with _flags_named(given):
            report = stage_commands.validate(_recipe_with_flags(args, given), Path(args.candidate), out)
    else:
        report = _validate_flags(args)
    out.mkdir(parents=True, exist_ok=True)
    write_reports(report, out)
    # what `gate` trusts: a manifest of the two files written here (the folder's other files are
    # other stages'), so a report edited by hand afterwards is refused
    write_report_manifest(
        out,
        [out / REPORT_JSON, out / REPORT_MD],
        gate=report["gate"],
        candidate=Path(args.candidate) if Path(args.candidate).is_file() else None,
    )
    gate = GateResult.from_dict(report["gate"])
    print(f"report: {out / 'report.json'}")
    print(gate.line())
    return EXIT_OK if gate.passed else EXIT_GATE_FAILED


def _validate_flags(args) -> dict[str, Any]:
    """``modelpress validate`` without a recipe: one candidate on one runtime, from the flags and the
    dataclass defaults."""
    from modelpress.fileio import graph_input_shapes
    from modelpress.modalities import get_modality
    from modelpress.models import load_model_and_preprocessor
    from modelpress.recipe import GateConfig, ValidateConfig, fit_lengths, section_config
    from modelpress.runtimes.registry import RUNTIMES
    from modelpress.validate.stage import file_opener, teacher_opener, validate_stage

    _stage_recipe(args)  # --set without --recipe is refused
    ref = _model_ref(args.teacher, None, "--teacher")
    task = _task(args, None, ref)
    model, preprocessor = load_model_and_preprocessor(ref, task)
    values = dataclasses.asdict(ValidateConfig())
    changes = {
        "eval_data": args.eval_data,
        "eval_format": args.eval_format,
        "batch_sizes": args.batch_sizes,
        "seq_lengths": args.seq_lengths,
        "num_samples": args.num_samples,
    }
    values.update({k: v for k, v in changes.items() if v is not None})
    cfg = section_config(ValidateConfig, "validate", values)
    gate_cfg = section_config(
        GateConfig, "gate", {"max_drop": _pick(args.max_drop, None, "gate", "max_drop", GateConfig)}
    )
    modality = get_modality(task.modality)
    # the flags' lengths the model cannot take are refused, under the flag's own name; the defaults are clipped
    flags = {f"validate.{k}": (f"--{k.replace('_', '-')}", v) for k, v in changes.items() if v is not None}
    with _flags_named(flags):
        fitted_sections, fitted = fit_lengths(
            {"validate": cfg},
            task=task,
            modality=modality,
            model_config=model.config,
            preprocessor=preprocessor,
            written=lambda key: key in flags,
        )
    cfg, task = fitted_sections["validate"], task.with_lengths(fitted)
    es = task.read_eval(cfg.eval_data, cfg, model_config=model.config, preprocessor=preprocessor)
    runtime = args.runtime or ("openvino" if args.candidate.endswith(".xml") else "onnxruntime")
    names = modality.check_graph_inputs(RUNTIMES.get(runtime).graph_inputs(args.candidate), source=args.candidate)
    shapes = graph_input_shapes(args.candidate) if args.candidate.endswith(".onnx") else None
    encoder = modality.encoder(preprocessor, input_names=names, max_length=cfg.max_length, input_shapes=shapes)
    report = validate_stage(
        task=task,
        cfg=cfg,
        gate_cfg=gate_cfg,
        teacher=teacher_opener(model, task=task, encoder=encoder, threads=cfg.threads),
        candidates=[
            file_opener(
                Path(args.candidate),
                task=task,
                encoder=encoder,
                threads=cfg.threads,
                name="candidate",
                runtime=runtime,
                **cfg.runner_options(runtime),
            )
        ],
        eval_set=es,
        name=Path(args.candidate).stem,
    )
    report["defaults_clipped"] = dict(fitted.clipped)
    return report


def cmd_gate(args) -> int:
    from modelpress.manifest import trusted_report
    from modelpress.recipe import GateConfig, section_config
    from modelpress.validate.gate import gate_report
    from modelpress.validate.report import read_json

    if args.max_drop is not None:
        section_config(GateConfig, "gate", {"max_drop": args.max_drop})  # --max-drop -1 is refused
    # a bundle (passing or .rejected) or a validate report folder: its manifest vouches for the report;
    # a folder without one is refused, since anyone could have written its report.json
    report = read_json(trusted_report(Path(args.run_dir)))
    result = gate_report(report, max_drop=args.max_drop, metric=args.metric, policy=args.policy)
    print(result.line())
    return EXIT_OK if result.passed else EXIT_GATE_FAILED


def cmd_analyze(args) -> int:
    from modelpress.paths import analysis_dir
    from modelpress.run_commands import analyze_run

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


def cmd_sign(args) -> int:
    from modelpress.signing import sign_bundle

    print(f"signature: {sign_bundle(Path(args.bundle), Path(args.key))}")
    return EXIT_OK


def cmd_verify(args) -> int:
    from modelpress.manifest import require_intact
    from modelpress.signing import verify_signature

    verify_signature(Path(args.bundle), Path(args.key))
    manifest = require_intact(Path(args.bundle))
    print(
        f"verified: {args.bundle} (its signature matches {args.key}; every file matches its manifest; "
        f"gate verdict {manifest.get('verdict')})"
    )
    return EXIT_OK


def cmd_engine(args) -> int:
    from modelpress.run_commands import engine_stage

    out = engine_stage(Path(args.run_dir), fp16=args.fp16)
    print(f"engine: {out}")
    return EXIT_OK


def cmd_init(args) -> int:
    from modelpress.cli_model import write_init

    out = write_init(args)
    args.result = {"paths": {"recipe": str(out)}}
    print(f"recipe: {out}")
    return EXIT_OK


def cmd_inspect(args) -> int:
    from modelpress.cli_output import inspect_lines, inspect_result

    info = inspect_result(Path(args.bundle))
    args.result = {"inspect": info}
    for line in inspect_lines(info):
        print(line)
    return EXIT_OK


def cmd_triton(args) -> int:
    from modelpress.triton import write_repository

    folder = write_repository(args.bundle, args.repo, runtime=args.runtime, name=args.name, force=args.force)
    args.result = {"paths": {"model": str(folder), "config": str(folder / "config.pbtxt")}}
    print(f"triton model: {folder} (config {folder / 'config.pbtxt'})")
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "init": cmd_init,
    "inspect": cmd_inspect,
    "triton": cmd_triton,
    "distill": cmd_distill,
    "export": cmd_export,
    "quantize": cmd_quantize,
    "validate": cmd_validate,
    "gate": cmd_gate,
    "analyze": cmd_analyze,
    "engine": cmd_engine,
    "sign": cmd_sign,
    "verify": cmd_verify,
}


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

    def error(message: str) -> None:
        raise _UsageError(message)

    for p in [parser, *_subparsers(parser)]:
        p.error = error  # type: ignore[method-assign]
    try:
        return parser.parse_args(words)
    except _UsageError as exc:
        from modelpress.cli_output import json_object

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
            return COMMANDS[args.command](args)
    except ModelpressError as exc:
        return fail(str(exc), exit_code_for(exc))
    except ModuleNotFoundError as exc:
        from modelpress.deploy_side import PRESS_MODULES

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
    from modelpress.cli_output import json_object

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
